-- What every cv_counters row must equal, recounted from the decisions,
-- the instances and the incidents (choose_version_spec, the fault
-- harness's audit, postgres_spec). In flight excludes instances waiting in
-- an incident. The same text on both databases: CASE rather than a sum of
-- comparisons (PostgreSQL's booleans do not add up), and the sums of
-- counts cast back to integers (PostgreSQL's are numeric).
local C = {}

C.RECOUNT = [[
  SELECT d.workflow, d.flag, d.version,
    count(*) AS routed,
    sum(CASE WHEN i.state = 'completed' THEN 1 ELSE 0 END) AS completed,
    sum(CASE WHEN i.state = 'cancelled' THEN 1 ELSE 0 END) AS cancelled,
    sum(CASE WHEN i.state NOT IN ('completed', 'cancelled', 'incident')
        THEN 1 ELSE 0 END) AS in_flight,
    sum(CASE WHEN EXISTS (SELECT 1 FROM incidents n
                          WHERE n.instance_id = d.instance_id)
        THEN 1 ELSE 0 END) AS with_incidents,
    CAST(sum((SELECT count(*) FROM incidents n
              WHERE n.instance_id = d.instance_id)) AS INTEGER) AS incidents,
    CAST(sum((SELECT count(*) FROM incidents n
              WHERE n.instance_id = d.instance_id
                AND n.resolved_at IS NULL)) AS INTEGER) AS open_incidents
  FROM cv_decisions d JOIN instances i ON i.id = d.instance_id
  GROUP BY d.workflow, d.flag, d.version
  ORDER BY d.workflow, d.flag, d.version]]

C.COUNTERS = [[
  SELECT workflow, flag, version, routed, completed, cancelled, in_flight,
    with_incidents, incidents, open_incidents
  FROM cv_counters ORDER BY workflow, flag, version]]

return C
