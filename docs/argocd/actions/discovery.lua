-- Argo CD resource action discovery for dualwrite.io/DualWritePipeline: which of the migration
-- verbs make sense now (the others are listed disabled, as Argo CD shows them greyed out).
--   no migration, not started yet, pinned by the spec (targetStep or paused), or a request
--   still waiting for the operator        -> every verb disabled
--   promote, promote-full                 -> the current step is not the last
--   pause                                 -> the step is not held and is not the last
--   resume                                -> the step is held (by pause, rollback or abort)
--   rollback                              -> the current step is not the first
--   abort                                 -> unless already aborted to the first step
--   verify                                -> started, and no request waiting (the spec's pins
--                                            do not stop it: it moves no step)
-- Tests: action_test.yaml, run by hack/check-argocd-health.

local actions = {}
local verbs = {"promote", "promote-full", "pause", "resume", "rollback", "abort", "verify"}
for _, verb in ipairs(verbs) do
  actions[verb] = {["disabled"] = true}
end

local spec = nil
if obj.spec ~= nil then
  spec = obj.spec.migration
end
local current = nil
if obj.status ~= nil then
  current = obj.status.migration
end
if spec == nil or current == nil or spec.steps == nil or current.request ~= nil then
  return actions
end
actions["verify"]["disabled"] = false
if spec.targetStep ~= nil or spec.paused == true then
  return actions
end

local step = current.currentStep or 0
local last = #spec.steps - 1
local held = current.held ~= nil

actions["promote"]["disabled"] = step >= last
actions["promote-full"]["disabled"] = step >= last
actions["pause"]["disabled"] = held or step >= last
actions["resume"]["disabled"] = not held
actions["rollback"]["disabled"] = step <= 0
actions["abort"]["disabled"] = step == 0 and held and current.held.reason == "Aborted"
return actions
