{{/*
Chart name, truncated to 63 characters (the limit of a label value and of a DNS label).
*/}}
{{- define "dualwrite-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name, unless it already contains the chart name.
Truncated to 63 characters because some Kubernetes name fields are limited to that.
*/}}
{{- define "dualwrite-operator.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "dualwrite-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object of the release.
*/}}
{{- define "dualwrite-operator.labels" -}}
helm.sh/chart: {{ include "dualwrite-operator.chart" . }}
{{ include "dualwrite-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: dualwrite
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels: stable for the life of the release (a Deployment's selector is immutable).
*/}}
{{- define "dualwrite-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dualwrite-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the operator's ServiceAccount.
*/}}
{{- define "dualwrite-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dualwrite-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator's image; the relays it deploys use the same one unless relayImage (chart) or
spec.relay.image (pipeline) overrides it.
*/}}
{{- define "dualwrite-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Leader election is needed as soon as more than one replica runs; it can also be forced on for a
single replica (so that a rolling update never has two active operators, even briefly).
*/}}
{{- define "dualwrite-operator.leaderElect" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicas) 1) }}true{{- end }}
{{- end }}

{{/*
Labels and annotations inserted under the CRD's metadata (templates/crd.yaml). Starts with a
newline and is indented for that place.
*/}}
{{- define "dualwrite-operator.crdMetadata" }}
  labels:
    {{- include "dualwrite-operator.labels" . | nindent 4 }}
  {{- if .Values.crds.keep }}
  annotations:
    # Uninstalling the release must not delete the CRD: that would delete every pipeline.
    helm.sh/resource-policy: keep
  {{- end }}
{{- end }}
