-- The terminal job statuses as a set: terminal[status] is true once a job has ended.
-- common/scripts.py puts the table in, built from common.status.TERMINAL and sorted.
local terminal = __TERMINAL__
