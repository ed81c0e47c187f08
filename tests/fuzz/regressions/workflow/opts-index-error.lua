local sy = require "switchyard"
return sy.workflow(setmetatable({}, { __index = function() error("boom") end }))
