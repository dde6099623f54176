-- Argo CD resource action "verify" for dualwrite.io/DualWritePipeline:
-- run the consistency check now.
--
-- A request in the status, as the other actions: the operator (not Argo CD) starts the check's
-- Job (`dualwrite verify --pipeline` under `<name>-verify`), names it in
-- status.migration.lastRequest.job, and its verdict lands in status.consistency. It moves no
-- step, so the spec's pins (targetStep, paused) do not stop it. Tests: action_test.yaml, run by
-- hack/check-argocd-health.

local migration = nil
if obj.spec ~= nil then
  migration = obj.spec.migration
end
if migration == nil then
  error("this pipeline has no spec.migration: there is no migration to verify", 0)
end
if obj.status == nil or obj.status.migration == nil then
  error("the operator has not started this migration yet (no status.migration)", 0)
end
obj.status.migration.request = {
  action = "Verify",
  requestedAt = os.date("!%Y-%m-%dT%H:%M:%SZ"),
  requestedBy = "argocd",
  -- Tells two clicks within one second apart (requestedAt has whole seconds): the
  -- resourceVersion Argo CD read, new after every write to the pipeline.
  nonce = obj.metadata.resourceVersion
}
return obj
