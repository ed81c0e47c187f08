local sy = require "switchyard"
local t = sy.task { run = function() end }
t.kind = "nope"
return sy.workflow { name = "w", start = "a", steps = { a = t } }
