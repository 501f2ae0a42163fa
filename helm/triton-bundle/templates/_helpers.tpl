{{- define "tb.name" -}}{{ .Release.Name }}-triton{{- end -}}

{{- define "tb.labels" -}}
app.kubernetes.io/name: triton-bundle
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "tb.selector" -}}
app.kubernetes.io/name: triton-bundle
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "tb.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default (printf "%s-py3" .Chart.AppVersion) }}
{{- end -}}

{{- define "tb.adminKeySecret" -}}
{{ .Values.adminKey.existingSecret | default (printf "%s-admin-key" (include "tb.name" .)) }}
{{- end -}}

{{- define "tb.claim" -}}
{{ .Values.repository.pvc.existingClaim | default (printf "%s-repository" (include "tb.name" .)) }}
{{- end -}}

{{/* Pods run on the GPU type the plans were built for. */}}
{{- define "tb.gpuAffinity" -}}
{{- if .Values.gpu.product }}
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - key: nvidia.com/gpu.product
              operator: In
              values: [{{ .Values.gpu.product | quote }}]
{{- end }}
{{- end -}}

{{- define "tb.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {drop: [ALL]}
{{- end -}}

{{/* The queue-time expression both autoscalers read: monitoring/'s recording rule, for one step. */}}
{{- define "tb.queueQuery" -}}
max(model:nv_inference_queue_us_per_request:rate5m{model="{{ .Values.autoscaling.model }}"})
{{- end -}}
