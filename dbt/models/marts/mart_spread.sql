-- How much each score moves across the calibration sets of one source (the paper's Table 1 when filtered
-- to kind 'task' / 'task_average'); the statistics are int_spread's.
select * from {{ ref('int_spread') }}
