{{/*
The settings the workers read, as ConfigMap data. Worker pods carry a checksum of this data
only (not of the ConfigMap object, whose labels change with every chart version), so an
upgrade that changes nothing a worker reads leaves every GPU pod running.
*/}}
{{- define "zq.configData" -}}
ZQ_STORAGE_URL: {{ .Values.storage.url | quote }}
{{- with .Values.storage.s3.endpointUrl }}
ZQ_S3_ENDPOINT_URL: {{ . | quote }}
{{- end }}
ZQ_S3_REGION: {{ .Values.storage.s3.region | quote }}
ZQ_JOB_TIMEOUT_S: {{ .Values.config.jobTimeoutS | quote }}
ZQ_LEASE_TTL_S: {{ .Values.config.leaseTtlS | quote }}
ZQ_MAX_DELIVERIES: {{ .Values.config.maxDeliveries | quote }}
ZQ_METRICS_PORT: {{ .Values.config.metricsPort | quote }}
ZQ_KEY_PREFIX: {{ .Values.config.keyPrefix | quote }}
ZQ_HEALTH_DIR: /var/run/zq-health
ZQ_ADAPTER_CACHE_MB: {{ .Values.adapters.cacheMb | quote }}
ZQ_ADAPTER_DIR: /var/cache/zq-adapters
ZQ_ADAPTER_PASS_S: {{ .Values.adapters.passSeconds | quote }}
ZQ_ADAPTER_SLOTS: {{ .Values.adapters.slots | quote }}
ZQ_ADAPTER_MAX_RANK: {{ .Values.adapters.maxRank | quote }}
{{- with .Values.safety }}{{ if .enabled }}
ZQ_SAFETY_MODEL: {{ .model | quote }}
ZQ_SAFETY_THRESHOLD: {{ .threshold | toString | quote }}
ZQ_SAFETY_LABELS: {{ join "," .labels | quote }}
ZQ_SAFETY_PROMPT_BLOCKLIST: {{ join "," .promptBlocklist | quote }}
ZQ_SAFETY_PROMPT_MODEL: {{ .promptModel | quote }}
ZQ_SAFETY_PROMPT_LABELS: {{ join "," .promptLabels | quote }}
ZQ_SAFETY_PROMPT_THRESHOLD: {{ .promptThreshold | toString | quote }}
ZQ_SAFETY_GATE: {{ .gate | quote }}
{{- end }}{{ end }}
{{- range $k, $v := .Values.config.extraEnv }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{- define "zq.configChecksum" -}}
{{- include "zq.configData" . | sha256sum -}}
{{- end -}}

{{/* Name of the Secret holding the in-chart Redis's password. */}}
{{- define "zq.redisSecretName" -}}
{{- .Values.redis.auth.existingSecret | default (printf "%s-redis" (include "zq.fullname" .)) -}}
{{- end -}}

{{/* Selector of every pod of this release (what the Redis policy admits). */}}
{{- define "zq.releaseSelector" -}}
app.kubernetes.io/name: {{ include "zq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
KEDA reads zq_queue_load from Prometheus, so autoscaling needs the exporter and a scrape of
it that carries the namespace and zq_release labels the query selects on. Fails naming the
keys otherwise. (dict "root" $ "type" $type)
*/}}
{{- define "zq.requireQueueLoadScrape" -}}
{{- $v := .root.Values -}}
{{- if not $v.exporter.enabled -}}
{{- fail (printf "workers.%s.autoscaling.enabled needs exporter.enabled=true: KEDA scales on the exporter's zq_queue_load" .type) -}}
{{- end -}}
{{- if not (or $v.monitoring.serviceMonitor.enabled $v.keda.prometheus.externalScrape) -}}
{{- fail (printf "workers.%s.autoscaling.enabled needs monitoring.serviceMonitor.enabled=true (or keda.prometheus.externalScrape=true when your own scrape config reads the exporter and sets the namespace and zq_release labels): without a scrape KEDA's query is empty" .type) -}}
{{- end -}}
{{- end -}}

{{/* The PromQL selector of this release's exporter series. */}}
{{- define "zq.releaseMatchers" -}}
{{- printf "namespace=%q, zq_release=%q" .Release.Namespace .Release.Name -}}
{{- end -}}

{{/*
Egress every chart component needs: DNS and the broker; with "storage" true also object
storage (and the Hugging Face Hub, for workers). (dict "root" $ "storage" bool)
*/}}
{{- define "zq.egressRules" -}}
{{- $np := .root.Values.networkPolicy -}}
{{- $rules := list -}}
{{- /* DNS, wherever the cluster resolver runs (a kube-dns pod or a node-local cache). */ -}}
{{- $rules = append $rules (dict "ports" (list (dict "port" 53 "protocol" "UDP") (dict "port" 53 "protocol" "TCP"))) -}}
{{- if .root.Values.redis.enabled -}}
{{- $redis := dict "podSelector" (dict "matchLabels" (include "zq.selectorLabels" (dict "root" .root "component" "redis") | fromYaml)) -}}
{{- $rules = append $rules (dict "to" (list $redis) "ports" (list (dict "port" 6379 "protocol" "TCP"))) -}}
{{- else -}}
{{- $rules = append $rules (include "zq.egressTarget" $np.egress.redis | fromYaml) -}}
{{- end -}}
{{- if .storage -}}
{{- $rules = append $rules (include "zq.egressTarget" $np.egress.storage | fromYaml) -}}
{{- end -}}
{{- toYaml (concat $rules $np.egress.extra) -}}
{{- end -}}

{{/* One egress rule to a networkPolicy.egress target: its CIDRs (none: anywhere), its ports. */}}
{{- define "zq.egressTarget" -}}
{{- $ports := list -}}
{{- range .ports }}{{ $ports = append $ports (dict "port" . "protocol" "TCP") }}{{ end -}}
{{- $rule := dict "ports" $ports -}}
{{- if .cidrs -}}
{{- $to := list -}}
{{- range .cidrs }}{{ $to = append $to (dict "ipBlock" (dict "cidr" .)) }}{{ end -}}
{{- $_ := set $rule "to" $to -}}
{{- end -}}
{{- toYaml $rule -}}
{{- end -}}

{{/* The peer allowed to scrape the metrics ports: both selectors must match. */}}
{{- define "zq.prometheusPeer" -}}
{{- $p := .Values.networkPolicy.prometheus -}}
{{- $peer := dict -}}
{{- with $p.namespaceSelector }}{{ $_ := set $peer "namespaceSelector" . }}{{ end -}}
{{- with $p.podSelector }}{{ $_ := set $peer "podSelector" . }}{{ end -}}
{{- toYaml (list $peer) -}}
{{- end -}}
