-- Audit: an epoch starts at epoch * epoch_ms (DESIGN.md: the engine steps one epoch of
-- --epoch-ms at a time), in every results table, and a scan happens within its epoch: the
-- engine runs the scheduler tick (task_tick_numa -> task_numa_work) at the epoch's end, so
-- epoch * epoch_ms < t_ms <= (epoch + 1) * epoch_ms.
-- Returns: one row per offending row, with the table (and sweep point) it comes from. The
-- epoch length is the point's (a sweep's epoch_ms key) or the run's.
SELECT 'epochs' AS source, point, policy, vm, epoch, t_ms, epoch * m.epoch_ms AS expected_t_ms
FROM epochs JOIN _timeline_epoch_ms AS m USING (point)
WHERE t_ms <> epoch * m.epoch_ms
UNION ALL
SELECT 'vcpu_epochs', point, policy, vm, epoch, t_ms, epoch * m.epoch_ms
FROM vcpu_epochs JOIN _timeline_epoch_ms AS m USING (point)
WHERE t_ms <> epoch * m.epoch_ms
UNION ALL
SELECT 'scans', point, policy, vm, epoch, t_ms, epoch * m.epoch_ms
FROM scans JOIN _timeline_epoch_ms AS m USING (point)
WHERE t_ms <= epoch * m.epoch_ms OR t_ms > (epoch + 1) * m.epoch_ms
ORDER BY source, point, policy, vm, epoch
