{{/*
Names and labels (the common Helm chart helpers).
*/}}
{{- define "ws-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ws-gateway.fullname" -}}
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

{{- define "ws-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ws-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ws-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ws-gateway.labels" -}}
helm.sh/chart: {{ include "ws-gateway.chart" . }}
{{ include "ws-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
A duration as whole seconds: "25s", "2m", "1500ms" or a bare number of seconds.
*/}}
{{- define "ws-gateway.seconds" -}}
{{- $v := toString . -}}
{{- if hasSuffix "ms" $v -}}{{ div (trimSuffix "ms" $v | int) 1000 }}
{{- else if hasSuffix "s" $v -}}{{ trimSuffix "s" $v | int }}
{{- else if hasSuffix "m" $v -}}{{ mul (trimSuffix "m" $v | int) 60 }}
{{- else if hasSuffix "h" $v -}}{{ mul (trimSuffix "h" $v | int) 3600 }}
{{- else -}}{{ $v | int }}{{- end -}}
{{- end }}

{{/*
Sidecar injection API. Every template below takes a dict:
  gateway: values shaped like this chart's values.yaml (image, config, ports, resources,
           securityContext, nativeSidecar, terminationGracePeriodSeconds)
  root:    the including chart's top-level context (.)
  name:    the ConfigMap name holding the gateway config
*/}}

{{/* The gateway's config file: the user's config plus listen addresses from ports. */}}
{{- define "ws-gateway.configFile" -}}
{{- $config := deepCopy (.gateway.config | default dict) -}}
{{- $_ := set $config "listen" (printf "0.0.0.0:%v" .gateway.ports.traffic) -}}
{{- $_ := set $config "admin_listen" (printf "0.0.0.0:%v" .gateway.ports.admin) -}}
{{ toYaml $config }}
{{- end }}

{{/* drain.timeout in seconds (default 25). */}}
{{- define "ws-gateway.drainSeconds" -}}
{{- $drain := (.gateway.config | default dict).drain | default dict -}}
{{- include "ws-gateway.seconds" ($drain.timeout | default "25s") -}}
{{- end }}

{{/* Pod grace period: the value given, else drain.timeout + 5; refuses one that does not exceed the drain. */}}
{{- define "ws-gateway.terminationGracePeriodSeconds" -}}
{{- $drain := include "ws-gateway.drainSeconds" . | int -}}
{{- $grace := .gateway.terminationGracePeriodSeconds | default (add $drain 5) | int -}}
{{- if le $grace $drain -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed the gateway's drain.timeout (%ds), or Kubernetes kills the gateway before it has drained" $grace $drain) -}}
{{- end -}}
{{- $grace -}}
{{- end }}

{{/* The ConfigMap with the gateway's config file. */}}
{{- define "ws-gateway.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .name }}
  labels:
    {{- include "ws-gateway.labels" .root | nindent 4 }}
data:
  gateway.yaml: |
    {{- include "ws-gateway.configFile" . | nindent 4 }}
{{- end }}

{{/* Pod annotation that rolls pods when the gateway config changes. */}}
{{- define "ws-gateway.checksumAnnotation" -}}
checksum/ws-gateway-config: {{ include "ws-gateway.configFile" . | sha256sum }}
{{- end }}

{{/* The volume entry for the config (goes under spec.volumes). */}}
{{- define "ws-gateway.volume" -}}
- name: ws-gateway-config
  configMap:
    name: {{ .name }}
{{- end }}

{{/* The gateway container (goes under spec.containers, or spec.initContainers when nativeSidecar). */}}
{{- define "ws-gateway.container" -}}
{{- $image := .gateway.image -}}
- name: ws-gateway
  image: "{{ $image.repository }}:{{ $image.tag | default .root.Chart.AppVersion }}"
  imagePullPolicy: {{ $image.pullPolicy | default "IfNotPresent" }}
  {{- if .gateway.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  args: ["--config", "/etc/ws-gateway/gateway.yaml"]
  ports:
    - name: ws
      containerPort: {{ .gateway.ports.traffic }}
      protocol: TCP
    - name: admin
      containerPort: {{ .gateway.ports.admin }}
      protocol: TCP
  livenessProbe:
    httpGet:
      path: /healthz
      port: admin
    periodSeconds: 10
    failureThreshold: 3
  readinessProbe:
    httpGet:
      path: /readyz
      port: admin
    periodSeconds: 5
    failureThreshold: 2
  {{- with .gateway.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .gateway.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: ws-gateway-config
      mountPath: /etc/ws-gateway
      readOnly: true
{{- end }}
