{{/* The release's full name: the release name, with "-infleet" unless it says infleet already. */}}
{{- define "infleet.fullname" -}}
{{- if contains "infleet" .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-infleet" .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "infleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "infleet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; the selector labels are the stable subset. */}}
{{- define "infleet.selectorLabels" -}}
app.kubernetes.io/name: infleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "infleet.labels" -}}
{{ include "infleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "infleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The operator configuration file, exactly as the ConfigMap holds it. */}}
{{- define "infleet.config" -}}
{{ toYaml .Values.config }}
{{- end -}}
