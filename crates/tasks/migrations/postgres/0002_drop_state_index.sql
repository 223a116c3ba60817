-- Every state change rewrote this index, and only listing by state used it; claims and
-- expiries have their own partial indexes, and a listing can scan.
DROP INDEX tasks_by_state;
