-- Argo CD health check for dualwrite.io/DualWritePipeline.
--
-- Argo CD computes no health for an unknown CRD; this script maps the pipeline's status to an
-- Argo CD health, in this order (the first rule that matches wins):
--   1. no status, or status.observedGeneration < metadata.generation -> Progressing
--      (the operator has not yet seen the latest spec, so nothing else in status is current)
--   2. condition Stalled=True   -> Degraded   (cannot progress: invalid spec, blocked fail-fast)
--   3. condition Degraded=True  -> Degraded   (a provider is down; BestEffort runs on the rest)
--   4. spec.migration.paused, or status.migration.held (a pause, rollback or abort request)
--                               -> Suspended  (the current step stays in force)
--   5. Ready=False, reason ScaledToZero -> Suspended (spec.relay.replicas is 0: nothing runs)
--   6. condition Ready=True     -> Healthy
--   7. condition Reconciling=True -> Progressing (a change or a migration step under way)
--   8. otherwise                -> Progressing (e.g. Ready=False or Unknown after a restart)
--
-- It uses Lua's base library only: Argo CD runs a script from argocd-cm without the string, math
-- or os libraries unless resource.customizations.useOpenLibs is set for the kind.
-- Tests: health_test.yaml and testdata/, run by hack/check-argocd-health.

local function condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function isTrue(c)
  return c ~= nil and c.status == "True"
end

local function messageOf(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local hs = {}
local status = obj.status
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

if status == nil or status.observedGeneration == nil
    or (generation ~= nil and status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end

local conditions = status.conditions

local stalled = condition(conditions, "Stalled")
if isTrue(stalled) then
  hs.status = "Degraded"
  hs.message = messageOf(stalled, "The pipeline cannot progress (Stalled)")
  return hs
end

local degraded = condition(conditions, "Degraded")
if isTrue(degraded) then
  hs.status = "Degraded"
  hs.message = messageOf(degraded, "A provider is down; the pipeline runs on the others")
  return hs
end

if obj.spec ~= nil and obj.spec.migration ~= nil and obj.spec.migration.paused == true then
  local message = "Migration paused"
  local migration = status.migration
  if migration ~= nil and migration.currentStep ~= nil then
    message = message .. " at step " .. tostring(migration.currentStep)
    if migration.stepName ~= nil and migration.stepName ~= "" then
      message = message .. " (" .. migration.stepName .. ")"
    end
  end
  hs.status = "Suspended"
  hs.message = message
  return hs
end

if status.migration ~= nil and status.migration.held ~= nil then
  local migration = status.migration
  local message = "Migration held at step " .. tostring(migration.currentStep)
  if migration.stepName ~= nil and migration.stepName ~= "" then
    message = message .. " (" .. migration.stepName .. ")"
  end
  if migration.held.reason ~= nil then
    message = message .. " by a " .. migration.held.reason .. " request; resume lifts it"
  end
  hs.status = "Suspended"
  hs.message = message
  return hs
end

local ready = condition(conditions, "Ready")
if ready ~= nil and ready.status == "False" and ready.reason == "ScaledToZero" then
  hs.status = "Suspended"
  hs.message = messageOf(ready, "Scaled to zero")
  return hs
end

if isTrue(ready) then
  hs.status = "Healthy"
  hs.message = messageOf(ready, "Ready")
  return hs
end

local reconciling = condition(conditions, "Reconciling")
if isTrue(reconciling) then
  hs.status = "Progressing"
  hs.message = messageOf(reconciling, "Reconciling")
  return hs
end

hs.status = "Progressing"
hs.message = messageOf(ready, "Waiting for the pipeline to become Ready")
return hs
