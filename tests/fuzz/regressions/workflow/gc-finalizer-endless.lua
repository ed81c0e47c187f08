local sy = require "switchyard"
setmetatable({}, { __gc = function() while true do end end })
return sy.workflow { name = "w", start = "a", steps = { a = sy.task { run = function() end } } }
