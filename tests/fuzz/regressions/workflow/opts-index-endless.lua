local sy = require "switchyard"
return sy.workflow(setmetatable({}, { __index = function() while true do end end }))
