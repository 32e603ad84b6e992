-- `kvsweep status`: attempts recorded.
SELECT count(*) AS attempts FROM attempts;
