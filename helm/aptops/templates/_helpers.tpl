{{/* The release's base name, at most 63 characters. */}}
{{- define "aptops.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "aptops.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "aptops.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "aptops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ include "aptops.fullname" . }}{{- else -}}{{ required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{- define "aptops.tag" -}}{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}

{{/* The CLI image (aptops-hub carries the CLI, kfp and the pipelines), by digest when one is given. */}}
{{- define "aptops.cliImage" -}}
{{- if .Values.image.digest -}}
{{ printf "%s/aptops-hub@%s" .Values.image.registry .Values.image.digest }}
{{- else -}}
{{ printf "%s/aptops-hub:%s" .Values.image.registry (include "aptops.tag" .) }}
{{- end -}}
{{- end -}}

{{- define "aptops.pushgatewayUrl" -}}
{{- if .Values.monitoring.pushgateway.enabled -}}
{{ printf "http://%s-pushgateway.%s.svc:9091" (include "aptops.fullname" .) .Release.Namespace }}
{{- else -}}
{{ .Values.monitoring.pushgateway.url }}
{{- end -}}
{{- end -}}

{{- define "aptops.cacheClaim" -}}
{{- if .Values.cache.create -}}{{ printf "%s-cache" (include "aptops.fullname" .) }}{{- else -}}{{ .Values.cache.existingClaim }}{{- end -}}
{{- end -}}

{{/* Pod and container hardening shared by every workload. */}}
{{- define "aptops.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "aptops.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "aptops.noNamespaceGuard" -}}
{{- if eq .Release.Namespace "default" -}}
{{- fail "aptops does not install into the default namespace: pass --namespace (e.g. aptops) with --create-namespace" -}}
{{- end -}}
{{- end -}}

{{/* The register command line: the same cluster options `aptops compile` takes. */}}
{{- define "aptops.registerArgs" -}}
- register
- --host={{ .Values.kfp.host }}
- --cluster=/etc/aptops/cluster.yaml
{{- with .Values.kfp.namespace }}
- --namespace={{ . }}
{{- end }}
{{- range .Values.kfp.pipelines }}
- --pipeline={{ . }}
{{- end }}
{{- end -}}

{{/* Tolerations from values ({key, value, effect}) as the cluster file writes them (key=value:Effect). */}}
{{- define "aptops.tolerationStrings" -}}
{{- $out := list -}}
{{- range . -}}
{{- $out = append $out (printf "%s%s:%s" .key (ternary (printf "=%s" (.value | default "")) "" (not (empty .value))) .effect) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The cluster file (aptops compile --cluster) these values describe: the register Job compiles with it. */}}
{{- define "aptops.clusterFile" -}}
{{- $creds := dict -}}
{{- range $provider, $secret := .Values.credentials }}{{ if $secret }}{{ $_ := set $creds $provider $secret }}{{ end }}{{ end -}}
{{- $file := dict
  "images" (dict "registry" .Values.image.registry "tag" (include "aptops.tag" .) "pull_secrets" .Values.image.pullSecrets)
  "service_account" (include "aptops.serviceAccountName" .)
  "pools" (dict
    "cpu" (dict "node_selector" .Values.nodePools.cpu.nodeSelector "tolerations" (include "aptops.tolerationStrings" (.Values.nodePools.cpu.tolerations | default list) | fromJsonArray))
    "gpu" (dict "node_selector" .Values.nodePools.gpu.nodeSelector "tolerations" (include "aptops.tolerationStrings" .Values.nodePools.gpu.tolerations | fromJsonArray) "resource" .Values.nodePools.gpu.resource "count" (.Values.nodePools.gpu.count | int)))
  "resources" .Values.stageResources
  "credentials" $creds
  "cache" (dict "pvc" (include "aptops.cacheClaim" .) "mount_path" "/cache")
  "checkpoints" .Values.checkpoints
  "model_registry" (dict "address" .Values.modelRegistry.address "port" (.Values.modelRegistry.port | int) "secure" .Values.modelRegistry.secure "author" .Values.modelRegistry.author)
  "trainjob" (dict "enabled" .Values.trainjob.enabled "runtime" .Values.trainjob.runtime "num_nodes" (.Values.trainjob.numNodes | int) "gpus_per_node" (.Values.trainjob.gpusPerNode | int) "strategy" .Values.trainjob.strategy "stages" .Values.trainjob.stages "keep" .Values.trainjob.keep "timeout_minutes" (.Values.trainjob.timeoutMinutes | int))
-}}
{{- toYaml $file -}}
{{- end -}}

{{/* A third-party image (`image`, `tag`, optional `digest`) by digest when one is given. */}}
{{- define "aptops.image" -}}
{{- if .digest -}}{{ printf "%s@%s" .image .digest }}{{- else -}}{{ printf "%s:%s" .image .tag }}{{- end -}}
{{- end -}}

{{/* Model Registry's REST address from modelRegistry (the same rule as the cluster file's model_registry): empty
without an address; an http(s):// address is kept (its port added when given); a host gets the scheme and port. */}}
{{- define "aptops.modelRegistryUrl" -}}
{{- $r := .Values.modelRegistry -}}
{{- if $r.address -}}
{{- if contains "://" $r.address -}}
{{- $base := trimSuffix "/" $r.address -}}
{{- if and $r.port (eq (len (splitList ":" $base)) 2) }}{{ printf "%s:%d" $base ($r.port | int) }}{{ else }}{{ $base }}{{ end -}}
{{- else -}}
{{- printf "%s://%s:%d" (ternary "https" "http" $r.secure) $r.address (($r.port | int) | default (ternary 443 8080 $r.secure)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
