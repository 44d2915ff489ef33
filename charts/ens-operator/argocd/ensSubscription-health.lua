-- Argo CD health check for ens-operator.io/EnsSubscription (argocd-cm key
-- resource.customizations.health.ens-operator.io_EnsSubscription; see docs/gitops.md).
--   Healthy      Ready=True and active in ENS
--   Suspended    Ready=True and paused by spec.paused (ENS drops, not queues, events meanwhile),
--                or reconciliation paused with the ens-operator.io/paused annotation
--   Progressing  the controller is working on it (e.g. waiting for its callback's
--                verification), or has not seen this generation yet
--   Degraded     Stalled=True: a person must act (the message says what)
-- Plain Lua 5.1 (Argo CD runs gopher-lua).
local hs = {}

local function condition(conditions, type_)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

if obj.metadata.annotations ~= nil and obj.metadata.annotations["ens-operator.io/paused"] == "true" then
  hs.status = "Suspended"
  hs.message = "Reconciliation paused by the ens-operator.io/paused annotation"
  return hs
end

if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to report status"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe generation " .. tostring(generation)
  return hs
end

local conditions = obj.status.conditions
local ready = condition(conditions, "Ready")
local stalled = condition(conditions, "Stalled")
local active = condition(conditions, "Active")

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

if ready ~= nil and ready.status == "True" then
  if active ~= nil and active.status == "False" and active.reason == "Paused" then
    hs.status = "Suspended"
    hs.message = describe(active)
  else
    hs.status = "Healthy"
    hs.message = describe(ready)
  end
  return hs
end

hs.status = "Progressing"
if ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "Waiting for the controller to report readiness"
end
return hs
