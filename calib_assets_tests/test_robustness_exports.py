"""Issue 21's reliability matrix, safe exports: `export-model --force` used to delete whatever --out was
(a user's files, the artifact root with every checkpoint), `--out .` failed, and an unwritable --out was
found only after the model was loaded. Each case runs the CLI on the materialized `ci` study."""

import os

import pytest

from calib_assets.cli import main as cli_main

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("pipeline")]


@pytest.fixture
def export(materialized, monkeypatch, capsys):
    study, _, root, _, _ = materialized
    monkeypatch.setenv("CALIB_ASSETS_ROOT", str(root))
    target = f"{study.variant_keys[0]}|{study.calib_keys[0]}"

    def run(out, *flags, command="export-model"):
        args = [target] if command == "export-model" else [study.models[0].name, study.calib_keys[0]]
        code = cli_main(["--study", study.name, command, *args, "--out", str(out), *flags])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run, root


def snapshot(folder):
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_force_never_deletes_a_folder_with_a_users_files(export, tmp_path):
    run, _ = export
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    code, _, err = run(out, "--force")
    assert code == 2 and "holds files calib-assets did not write (thesis.tex)" in err
    assert (out / "thesis.tex").read_text() == "years of work" and len(list(out.iterdir())) == 1


@pytest.mark.parametrize("where", ["the artifact root", "a folder holding it", "a folder inside it"])
@pytest.mark.parametrize("command", ["export-model", "export-calibration"])
def test_the_artifact_root_is_never_an_export_target(export, where, command):
    run, root = export
    out = {"the artifact root": root, "a folder holding it": root.parent,
           "a folder inside it": root / "checkpoints"}[where]
    before = snapshot(root)
    code, _, err = run(out, "--force", command=command)
    assert code == 2 and "which calib-assets keeps" in err
    assert snapshot(root) == before


def test_out_dot_is_refused_clearly_and_a_relative_folder_works(export, tmp_path, monkeypatch):
    """The export replaces its folder as a whole, so it cannot be the folder the user stands in (this used
    to fail with "PosixPath('.') has an empty name")."""
    run, _ = export
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code, _, err = run(".")
    assert code == 2 and f"--out '{here}' is or holds the current folder" in err and "--out ./exported" in err
    code, out, err = run("exported")
    assert code == 0, err
    assert (here / "exported" / "config.json").is_file() and str(here / "exported") in out


def test_an_earlier_export_is_replaced_only_with_force(export, tmp_path):
    run, _ = export
    out = tmp_path / "hf"
    assert run(out)[0] == 0
    code, _, err = run(out)
    assert code == 2 and "holds an earlier export; pass --force to replace it" in err and "overwrite" not in err
    assert run(out, "--force")[0] == 0
    (out / "my-notes.md").write_text("notes")
    code, _, err = run(out, "--force")
    assert code == 2 and "my-notes.md" in err and (out / "my-notes.md").read_text() == "notes"


def test_an_unwritable_out_is_refused_before_the_model_is_loaded(export, tmp_path, monkeypatch):
    import calib_assets.models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(calib_assets.models, "load_model", no_loading)
    run, _ = export
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run(blocker / "hf")
    assert code == 2 and "cannot be created" in err and "is a file" in err
    if os.geteuid() != 0:  # root writes anywhere: the permission case needs another user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = run(locked / "hf")
        assert code == 2 and "cannot be written" in err


def test_export_calibration_leaves_a_users_files_alone(export, tmp_path):
    run, _ = export
    out = tmp_path / "release"
    out.mkdir()
    (out / "README.md").write_text("about this data")
    assert run(out, command="export-calibration")[0] == 2
    assert run(out, "--force", command="export-calibration")[0] == 0
    assert (out / "README.md").read_text() == "about this data" and (out / "samples.jsonl").is_file()
