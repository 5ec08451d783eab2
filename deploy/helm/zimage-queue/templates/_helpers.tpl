{{/* Chart name. */}}
{{- define "zq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name, at most 63 characters. */}}
{{- define "zq.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "zq.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "zq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: zimage-queue
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "exporter"). */}}
{{- define "zq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zq.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "zq.lightImage" -}}
{{- printf "%s:%s" .Values.image.lightRepository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "zq.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "zq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "zq.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "zq.redisHost" -}}
{{- printf "%s-redis" (include "zq.fullname" .) -}}
{{- end -}}

{{/*
How many Redis shards the fleet runs on: redis.shards for the in-chart Redis, the length of
externalRedis.shardUrlKeys for an external one; 1 (unsharded) otherwise.
*/}}
{{- define "zq.shardCount" -}}
{{- if .Values.redis.enabled -}}
{{- int (.Values.redis.shards | default 1) -}}
{{- else -}}
{{- if gt (int (.Values.redis.shards | default 1)) 1 -}}
{{- fail "redis.shards applies to the in-chart Redis (redis.enabled=true): for an external Redis list one Secret key per shard in externalRedis.shardUrlKeys" -}}
{{- end -}}
{{- len (.Values.externalRedis.shardUrlKeys | default (list "")) -}}
{{- end -}}
{{- end -}}

{{/* Name suffix of a shard's objects: "-<shard>" when sharded, "" with one shard. (dict "root" $ "shard" $i) */}}
{{- define "zq.shardSuffix" -}}
{{- if gt (include "zq.shardCount" .root | int) 1 -}}
{{- printf "-%d" (int .shard) -}}
{{- end -}}
{{- end -}}

{{/* The in-chart Redis's headless Service: every shard's pod by name, <pod>.<this>. */}}
{{- define "zq.redisHeadless" -}}
{{- printf "%s-redis-headless" (include "zq.fullname" .) -}}
{{- end -}}

{{/*
URL of one in-chart Redis: the shared Service unsharded, else the shard's pod through the
headless Service. The password is left as $(REDIS_PASSWORD) for Kubernetes to expand.
(dict "root" $ "shard" $i)
*/}}
{{- define "zq.inChartRedisUrl" -}}
{{- $root := .root -}}
{{- $host := include "zq.redisHost" $root -}}
{{- if gt (include "zq.shardCount" $root | int) 1 -}}
{{- $host = printf "%s-%d.%s" (include "zq.redisHost" $root) (int .shard) (include "zq.redisHeadless" $root) -}}
{{- end -}}
{{- if $root.Values.redis.auth.enabled -}}
{{- printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" $host -}}
{{- else -}}
{{- printf "redis://%s:6379/0" $host -}}
{{- end -}}
{{- end -}}

{{/* A worker type's settings: workerDefaults overridden by workers.<type>. */}}
{{- define "zq.worker" -}}
{{- $spec := index .root.Values.workers .type -}}
{{- toYaml (mustMergeOverwrite (deepCopy .root.Values.workerDefaults) (deepCopy $spec)) -}}
{{- end -}}

{{/* Grace period after SIGTERM: longer than the slowest job. (dict "root" $ "w" $w) */}}
{{- define "zq.gracePeriod" -}}
{{- $timeout := int .root.Values.config.jobTimeoutS -}}
{{- $grace := .w.terminationGracePeriodSeconds | default (add $timeout 300) | int -}}
{{- if le $grace $timeout -}}
{{- fail (printf "workers.%s.terminationGracePeriodSeconds (%d) must exceed config.jobTimeoutS (%d): a scale-down would kill the running job" .type $grace $timeout) -}}
{{- end -}}
{{- $grace -}}
{{- end -}}

{{/*
Autoscaler cooldown: how long idle GPUs stay after the load drops. It does not protect
running jobs (the load counts them, and the grace period lets a stopped worker finish its
job), so it need not exceed a job. (dict "root" $ "w" $w "type" $type)
*/}}
{{- define "zq.cooldown" -}}
{{- .w.autoscaling.cooldownS | default 300 | int -}}
{{- end -}}

{{/* Environment of the pods that use storage (workers, beat): broker and storage. */}}
{{- define "zq.env" -}}
{{- include "zq.redisEnv" . | trim }}
{{- include "zq.storageEnv" . }}
{{- end -}}

{{/*
ZQ_REDIS_URL. The in-chart Redis's password comes from its Secret and is put into the URL by
Kubernetes ($(VAR) expansion), so it never appears in a pod spec. Sharded (more than one
shard), for the components that use every shard (api, exporter, webhooks, beat):
ZQ_REDIS_URL is shard 0 and ZQ_REDIS_SHARDS lists every shard in routing order; an external
Redis's URLs come from the Secret as REDIS_SHARD_<i>_URL and are joined by $(VAR) expansion.
*/}}
{{- define "zq.redisEnv" -}}
{{- $n := include "zq.shardCount" . | int }}
{{- if gt $n 1 }}
{{- if .Values.redis.enabled }}
{{- $urls := list }}
{{- range $i := until $n }}
{{- $urls = append $urls (include "zq.inChartRedisUrl" (dict "root" $ "shard" $i)) }}
{{- end }}
{{- if .Values.redis.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "zq.redisSecretName" . }}
      key: {{ .Values.redis.auth.passwordKey }}
{{- end }}
- name: ZQ_REDIS_URL
  value: {{ first $urls | quote }}
- name: ZQ_REDIS_SHARDS
  value: {{ join "," $urls | quote }}
{{- else }}
{{- $secret := required "externalRedis.existingSecret is required when redis.enabled is false" .Values.externalRedis.existingSecret }}
{{- $urls := list }}
{{- range $i, $key := .Values.externalRedis.shardUrlKeys }}
- name: {{ printf "REDIS_SHARD_%d_URL" $i }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
{{- $urls = append $urls (printf "$(REDIS_SHARD_%d_URL)" $i) }}
{{- end }}
- name: ZQ_REDIS_URL
  value: {{ first $urls | quote }}
- name: ZQ_REDIS_SHARDS
  value: {{ join "," $urls | quote }}
{{- end }}
{{- else if and .Values.redis.enabled .Values.redis.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "zq.redisSecretName" . }}
      key: {{ .Values.redis.auth.passwordKey }}
- name: ZQ_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "zq.redisHost" .) | quote }}
{{- else if .Values.redis.enabled }}
- name: ZQ_REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "zq.redisHost" .) | quote }}
{{- else }}
- name: ZQ_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "externalRedis.existingSecret is required when redis.enabled is false" .Values.externalRedis.existingSecret }}
      key: {{ first (.Values.externalRedis.shardUrlKeys | default (list .Values.externalRedis.urlKey)) }}
{{- end }}
{{- end -}}

{{/*
ZQ_REDIS_URL of one shard only: for the pods that serve a single shard (its workers, its
Flower), which never read ZQ_REDIS_SHARDS. Unsharded, the same as zq.redisEnv.
(dict "root" $ "shard" $i)
*/}}
{{- define "zq.shardRedisEnv" -}}
{{- $root := .root }}
{{- if le (include "zq.shardCount" $root | int) 1 }}
{{- include "zq.redisEnv" $root }}
{{- else if $root.Values.redis.enabled }}
{{- if $root.Values.redis.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "zq.redisSecretName" $root }}
      key: {{ $root.Values.redis.auth.passwordKey }}
{{- end }}
- name: ZQ_REDIS_URL
  value: {{ include "zq.inChartRedisUrl" . | quote }}
{{- else }}
- name: ZQ_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "externalRedis.existingSecret is required when redis.enabled is false" $root.Values.externalRedis.existingSecret }}
      key: {{ index $root.Values.externalRedis.shardUrlKeys (int .shard) }}
{{- end }}
{{- end -}}

{{/* zq.env for the pods of one shard (its workers): that shard's broker, and storage. (dict "root" $ "shard" $i) */}}
{{- define "zq.shardEnv" -}}
{{- include "zq.shardRedisEnv" . | trim }}
{{- include "zq.storageEnv" .root }}
{{- end -}}

{{/* S3 credentials, only for the pods that read or write storage. */}}
{{- define "zq.storageEnv" -}}
{{- if and (hasPrefix "s3://" .Values.storage.url) (not .Values.storage.s3.useInstanceRole) }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ required "storage.s3.existingSecret is required for an s3:// storage.url" .Values.storage.s3.existingSecret }}
      key: {{ .Values.storage.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.storage.s3.existingSecret }}
      key: {{ .Values.storage.s3.secretAccessKeyKey }}
{{- end }}
{{- end -}}

{{/*
ZQ_WEBHOOK_ALLOW from webhooks.allow: for the dispatcher, which vets each call, and for beat,
which checks a campaign's webhook at submit. Outside the worker config, so it rolls no GPU pod.
*/}}
{{- define "zq.webhookAllowEnv" -}}
{{- with .Values.webhooks.allow -}}
- name: ZQ_WEBHOOK_ALLOW
  value: {{ join "," . | quote }}
{{- end -}}
{{- end -}}

{{/* Volumes for a read-only root filesystem: /tmp and the health directory. */}}
{{- define "zq.tmpVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}
{{- define "zq.tmpVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- end -}}

{{/* Pod-level fields shared by the chart's own components. (dict "root" $ "c" $component) */}}
{{- define "zq.podCommon" -}}
serviceAccountName: {{ include "zq.serviceAccountName" .root }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
