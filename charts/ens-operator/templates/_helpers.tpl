{{/* Names, labels and the cross-field checks the schema cannot express. */}}

{{- define "ens-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ens-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ens-operator.controller.fullname" -}}
{{- printf "%s-controller" (include "ens-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ens-operator.receiver.fullname" -}}
{{- printf "%s-receiver" (include "ens-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ens-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "ens-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ens-operator
{{- end }}

{{- define "ens-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ens-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ens-operator.controller.selectorLabels" -}}
{{ include "ens-operator.selectorLabels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "ens-operator.receiver.selectorLabels" -}}
{{ include "ens-operator.selectorLabels" . }}
app.kubernetes.io/component: receiver
{{- end }}

{{- define "ens-operator.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (include "ens-operator.controller.fullname" .) .Values.controller.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ens-operator.receiver.serviceAccountName" -}}
{{- if .Values.receiver.serviceAccount.create }}
{{- default (include "ens-operator.receiver.fullname" .) .Values.receiver.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.receiver.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ens-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The receiver's namespace: never the one holding ENS credentials (design: the receiver
faces the internet and reads the Secrets of its namespace). Default: <release namespace>-receiver. */}}
{{- define "ens-operator.receiver.namespace" -}}
{{- default (printf "%s-receiver" .Release.Namespace) .Values.receiver.namespace }}
{{- end }}

{{/* The namespace of the default credentials Secret ("" when there are none). */}}
{{- define "ens-operator.defaultCredentials.namespace" -}}
{{- if .Values.defaultCredentials.secretName }}
{{- default .Release.Namespace .Values.defaultCredentials.namespace }}
{{- end }}
{{- end }}

{{/* The lease the controller replicas elect a leader with. */}}
{{- define "ens-operator.leaseName" -}}
{{- include "ens-operator.controller.fullname" . }}
{{- end }}

{{/* "namespace/name" of the default credentials Secret; the namespace defaults to the pod's
own, spelled $(POD_NAMESPACE) so that a kustomize namespace override keeps working. */}}
{{- define "ens-operator.defaultCredentials" -}}
{{- with .Values.defaultCredentials }}
{{- if .secretName }}
{{- printf "%s/%s" (default "$(POD_NAMESPACE)" .namespace) .secretName }}
{{- end }}
{{- end }}
{{- end }}

{{/* The controller's rules on its own kinds and Events (ClusterRole, or a Role in
controller.watchNamespace). */}}
{{- define "ens-operator.controllerObjectRules" -}}
# Watch both kinds; patch adds/removes the finalizer and the create-pending and id annotations
# (the controller never writes spec).
- apiGroups: [ens-operator.io]
  resources: [enscallbacks, enssubscriptions]
  verbs: [get, list, watch, patch]
- apiGroups: [ens-operator.io]
  resources: [enscallbacks/status, enssubscriptions/status]
  verbs: [patch]
# External receivers' key Secrets are owned by their EnsCallback (blockOwnerDeletion).
- apiGroups: [ens-operator.io]
  resources: [enscallbacks/finalizers]
  verbs: [update]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/* Fails the render with a message for combinations values.schema.json cannot explain well. */}}
{{- define "ens-operator.validate" -}}
{{- if and (gt (int .Values.controller.replicas) 1) (not .Values.controller.leaderElection.enabled) }}
{{- fail "controller.replicas > 1 needs controller.leaderElection.enabled=true: two controllers without a Lease would both call ENS" }}
{{- end }}
{{- if .Values.defaultCredentials.create }}
{{- range $k := list "secretName" "clientId" "clientSecret" "authBaseUrl" }}
{{- if not (index $.Values.defaultCredentials $k) }}
{{- fail (printf "defaultCredentials.create=true needs defaultCredentials.%s" $k) }}
{{- end }}
{{- end }}
{{- if and $.Values.defaultCredentials.namespace (ne $.Values.defaultCredentials.namespace $.Release.Namespace) }}
{{- fail "defaultCredentials.create=true creates the Secret in the release namespace: leave defaultCredentials.namespace empty" }}
{{- end }}
{{- end }}
{{- if .Values.receiver.enabled }}
{{- $rx := include "ens-operator.receiver.namespace" . }}
{{- if eq $rx (include "ens-operator.defaultCredentials.namespace" .) }}
{{- fail (printf "unsafe layout: the receiver's namespace %s would hold the ENS default credentials (defaultCredentials.namespace, default: the release namespace). The receiver faces the internet and reads the Secrets of its namespace: give it a namespace of its own (receiver.namespace) or move the credentials" $rx) }}
{{- end }}
{{- if eq $rx .Values.controller.watchNamespace }}
{{- fail (printf "unsafe layout: receiver.namespace %s is controller.watchNamespace, where the teams' credentials Secrets live: give the receiver a namespace of its own" $rx) }}
{{- end }}
{{- end }}
{{- if and .Values.receiver.httpRoute.enabled (not .Values.receiver.httpRoute.parentRefs) }}
{{- fail "receiver.httpRoute.enabled=true needs receiver.httpRoute.parentRefs (the Gateway to attach to)" }}
{{- end }}
{{- if and .Values.receiver.httpRoute.enabled (not (.Capabilities.APIVersions.Has "gateway.networking.k8s.io/v1")) }}
{{- fail "receiver.httpRoute.enabled=true needs the Gateway API (gateway.networking.k8s.io/v1) in the cluster; with helm template pass --api-versions gateway.networking.k8s.io/v1" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) }}
{{- fail "serviceMonitor.enabled=true needs the Prometheus Operator CRDs (monitoring.coreos.com/v1) in the cluster; with helm template pass --api-versions monitoring.coreos.com/v1" }}
{{- end }}
{{- if and .Values.receiver.ingress.enabled (not .Values.receiver.enabled) }}
{{- fail "receiver.ingress.enabled=true needs receiver.enabled=true" }}
{{- end }}
{{- end }}

{{/* Egress every component needs: DNS and the API server. */}}
{{- define "ens-operator.egressCommon" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
- ports:
    {{- range .Values.networkPolicy.egress.apiServerPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .Values.networkPolicy.egress.apiServerCIDRs }}
  to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  {{- end }}
{{- end }}

{{/* The namespace holding route Secrets of chart 0.1 to carry over ("" when none can). */}}
{{- define "ens-operator.legacyRouteNamespace" -}}
{{- if and .Values.controller.migrateLegacyRoutes (ne (include "ens-operator.receiver.namespace" .) .Release.Namespace) }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
The receiver's workload kind: a StatefulSet when a volume claim per replica holds its spool, or
(without the spool) its dead letters; else a Deployment.
*/}}
{{- define "ens-operator.receiver.kind" -}}
{{- $r := .Values.receiver -}}
{{- if or (and $r.spool.enabled $r.spool.persistence.enabled) (and $r.deadLetter.enabled (not $r.spool.enabled) $r.deadLetter.persistence.enabled) -}}
StatefulSet
{{- else -}}
Deployment
{{- end -}}
{{- end }}
