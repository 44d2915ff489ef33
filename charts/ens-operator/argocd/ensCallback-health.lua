-- Argo CD health check for ens-operator.io/EnsCallback (argocd-cm key
-- resource.customizations.health.ens-operator.io_EnsCallback; see docs/gitops.md).
--   Healthy      Ready=True: the callback exists in ENS, is verified and matches the spec
--   Progressing  the controller is working on it (e.g. waiting for ENS's verification probe:
--                the message names the deadline), or has not seen this generation yet
--   Degraded     Stalled=True: a person must act (the message says what)
--   Suspended    reconciliation paused with the ens-operator.io/paused annotation
-- Plain Lua 5.1 (Argo CD runs gopher-lua): no goto, no integer division, no string methods
-- beyond the string library.
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
local verified = condition(conditions, "Verified")

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

hs.status = "Progressing"
if verified ~= nil and verified.status == "False" and verified.reason == "AwaitingVerification" then
  -- "… verify before <deadline>": the one thing a person may want to know while it waits.
  hs.message = describe(verified)
elseif ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "Waiting for the controller to report readiness"
end
return hs
