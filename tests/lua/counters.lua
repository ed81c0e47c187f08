-- What every cv_counters row (and cv_ramp_tallies row) must equal,
-- recounted from the decisions, the instances and the incidents (choose_version_spec, the fault
-- harness's audit, postgres_spec). In flight excludes instances waiting in
-- an incident. The same text on both databases: CASE rather than a sum of
-- comparisons (PostgreSQL's booleans do not add up), and the sums of
-- counts cast back to integers (PostgreSQL's are numeric).
local C = {}

-- A decision's incidents are its instance's raised while it was the one
-- in force: a decision closed by a reroute (outcome 'rerouted') keeps
-- those raised until then, the decision that replaced it (reroutes > 0)
-- those raised from then on.
local OF_D = [[n.instance_id = d.instance_id
      AND (d.reroutes = 0 OR n.raised_at >= d.decided_at)
      AND (d.outcome IS NULL OR d.outcome <> 'rerouted'
           OR n.raised_at <= d.ended_at)]]
local KEPT = "(d.outcome IS NULL OR d.outcome <> 'rerouted')"

C.RECOUNT = [[
  SELECT d.workflow, d.flag, d.version,
    sum(CASE WHEN d.reroutes = 0 THEN 1 ELSE 0 END) AS routed,
    sum(CASE WHEN i.state = 'completed' AND ]] .. KEPT .. [[
        THEN 1 ELSE 0 END) AS completed,
    sum(CASE WHEN i.state = 'cancelled' AND ]] .. KEPT .. [[
        THEN 1 ELSE 0 END) AS cancelled,
    sum(CASE WHEN i.state NOT IN ('completed', 'cancelled', 'incident')
        AND ]] .. KEPT .. [[ THEN 1 ELSE 0 END) AS in_flight,
    sum(CASE WHEN EXISTS (SELECT 1 FROM incidents n WHERE ]] .. OF_D .. [[)
        THEN 1 ELSE 0 END) AS with_incidents,
    CAST(sum((SELECT count(*) FROM incidents n WHERE ]] .. OF_D .. [[))
      AS INTEGER) AS incidents,
    CAST(sum((SELECT count(*) FROM incidents n WHERE ]] .. OF_D .. [[
                AND n.resolved_at IS NULL)) AS INTEGER) AS open_incidents,
    sum(CASE WHEN d.reroutes > 0 THEN 1 ELSE 0 END) AS rerouted_in,
    sum(CASE WHEN d.outcome = 'rerouted' THEN 1 ELSE 0 END) AS rerouted_out
  FROM cv_decisions d JOIN instances i ON i.id = d.instance_id
  GROUP BY d.workflow, d.flag, d.version
  ORDER BY d.workflow, d.flag, d.version]]

C.COUNTERS = [[
  SELECT workflow, flag, version, routed, completed, cancelled, in_flight,
    with_incidents, incidents, open_incidents, rerouted_in, rerouted_out
  FROM cv_counters ORDER BY workflow, flag, version]]

-- What every cv_ramp_tallies row must equal: the decisions routed (not
-- rerouted in) per flag, ramp step, workflow and version, counted the way
-- the report counts them, from the instances and incidents.
C.RAMP_RECOUNT = [[
  SELECT d.flag, coalesce(d.ramp_id, 0) AS ramp_id, d.workflow, d.version,
    count(*) AS routed,
    sum(CASE WHEN i.state = 'completed' AND ]] .. KEPT .. [[
        THEN 1 ELSE 0 END) AS completed,
    sum(CASE WHEN i.state NOT IN ('completed', 'cancelled', 'incident')
        AND ]] .. KEPT .. [[ THEN 1 ELSE 0 END) AS in_flight,
    CAST(sum((SELECT count(*) FROM incidents n WHERE ]] .. OF_D .. [[))
      AS INTEGER) AS incidents,
    sum(CASE WHEN EXISTS (SELECT 1 FROM incidents n WHERE ]] .. OF_D .. [[)
        THEN 1 ELSE 0 END) AS with_incidents
  FROM cv_decisions d JOIN instances i ON i.id = d.instance_id
  WHERE d.reroutes = 0
  GROUP BY d.flag, coalesce(d.ramp_id, 0), d.workflow, d.version
  ORDER BY 1, 2, 3, 4]]

C.RAMP_TALLIES = [[
  SELECT flag, ramp_id, workflow, version, routed, completed, in_flight,
    incidents, with_incidents
  FROM cv_ramp_tallies ORDER BY 1, 2, 3, 4]]

return C
