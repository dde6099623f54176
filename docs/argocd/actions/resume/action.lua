-- Argo CD resource action "resume" for dualwrite.io/DualWritePipeline:
-- lift a hold made by pause, rollback or abort.
--
-- Like Argo Rollouts' promote and abort, it writes a request into the status, never the spec:
-- Argo CD sends a change to `status` through the status subresource, so Git and self-heal never
-- see it and it pins nothing. The operator acts on status.migration.request once, records the
-- outcome in status.migration.lastRequest and removes the request. When the spec pins the
-- migration (targetStep or paused), the spec wins: the action fails naming the field to change
-- in Git. Tests: action_test.yaml, run by hack/check-argocd-health.

local migration = nil
if obj.spec ~= nil then
  migration = obj.spec.migration
end
if migration == nil then
  error("this pipeline has no spec.migration: there is no migration to resume", 0)
end
if migration.targetStep ~= nil then
  error("spec.migration.targetStep=" .. tostring(migration.targetStep) .. " pins this migration: change it in Git", 0)
end
if migration.paused == true then
  error("spec.migration.paused=true pins this migration: change it in Git", 0)
end
if obj.status == nil or obj.status.migration == nil then
  error("the operator has not started this migration yet (no status.migration)", 0)
end
obj.status.migration.request = {
  action = "Resume",
  requestedAt = os.date("!%Y-%m-%dT%H:%M:%SZ"),
  requestedBy = "argocd",
  -- Tells two clicks within one second apart (requestedAt has whole seconds): the
  -- resourceVersion Argo CD read, new after every write to the pipeline.
  nonce = obj.metadata.resourceVersion
}
return obj
