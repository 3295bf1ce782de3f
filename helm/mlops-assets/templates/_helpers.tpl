{{/* ---------------------------------------------------------------- names and labels */}}

{{- define "mlops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource-name prefix: fullnameOverride, "<release>" or "<release>-<chart>". Kept to 40
characters so that "<prefix>-<component>" (and KubeRay's "-head-svc") stay DNS-1035 labels. */}}
{{- define "mlops.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mlops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels. Call with (dict "root" $ "component" "serving"). */}}
{{- define "mlops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlops.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels. Call with (dict "root" $ "component" "serving"). */}}
{{- define "mlops.labels" -}}
helm.sh/chart: {{ include "mlops.chart" .root }}
{{ include "mlops.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: mlops-assets
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Metadata block: name, namespace, labels, annotations. Call with (dict "root" $
"component" "x" "name" "n"), optionally "annotations" (a dict) and "skips" (a list of
"CHECK_ID=reason" strings that become checkov skip annotations, each with its reason) and
"labels" (extra labels). */}}
{{- define "mlops.metadata" -}}
name: {{ .name }}
namespace: {{ .root.Release.Namespace }}
labels:
  {{- include "mlops.labels" . | nindent 2 }}
  {{- with .labels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- $ann := dict }}
{{- range $k, $v := (default (dict) .annotations) }}{{ $_ := set $ann $k $v }}{{ end }}
{{- $skips := default (list) .skips }}
{{- if eq .root.Release.Namespace "default" }}
{{- $skips = append $skips "CKV_K8S_21=Rendered without --namespace. The chart puts every object in the release namespace given to helm and never hard-codes one; pick a dedicated namespace at install time" }}
{{- end }}
{{- range $i, $skip := $skips }}{{ $_ := set $ann (printf "checkov.io/skip%d" (add1 $i)) $skip }}{{ end }}
{{- with $ann }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Justified checkov skips shared by several workloads. */}}
{{- define "mlops.skip.secretEnv" -}}
CKV_K8S_35=Secrets reach the container only through secretKeyRef (never inlined in a manifest or ConfigMap); Dagster, MLflow, PostgreSQL and the app read credentials from environment variables, e.g. DAGSTER_PG_PASSWORD
{{- end }}
{{- define "mlops.skip.digest" -}}
CKV_K8S_43=Images are pinned by an immutable release tag (default the chart appVersion); set the image digest value to pin by digest too, as the README recommends for production
{{- end }}
{{- define "mlops.skip.token" -}}
CKV_K8S_38=This pod launches, watches and deletes the run Jobs of the K8sRunLauncher and needs its API token; its ServiceAccount is bound only to a namespaced Role for jobs plus read access to pods and logs
{{- end }}

{{/* ---------------------------------------------------------------------- images */}}

{{/* "repository:tag[@digest]". Call with (dict "repository" r "tag" t "digest" d). */}}
{{- define "mlops.imageRef" -}}
{{- $ref := printf "%s:%s" .repository (toString .tag) }}
{{- if .digest }}{{ $ref = printf "%s@%s" $ref .digest }}{{ end }}
{{- $ref }}
{{- end }}

{{/* imagePullPolicy: the value when set, else IfNotPresent for an image pinned by digest
(immutable) and Always for one pinned by tag (a re-pushed tag is picked up and every pull
is authorised). Call with an image values dict. */}}
{{- define "mlops.pullPolicy" -}}
{{- if .pullPolicy }}{{ .pullPolicy }}{{ else if .digest }}IfNotPresent{{ else }}Always{{ end }}
{{- end }}

{{/* The project's image; the tag defaults to the chart's appVersion. */}}
{{- define "mlops.appImage" -}}
{{- include "mlops.imageRef" (dict "repository" .Values.image.repository "tag" (default .Chart.AppVersion .Values.image.tag) "digest" .Values.image.digest) }}
{{- end }}

{{- define "mlops.rayImage" -}}
{{- $img := .Values.ray.image }}
{{- if $img.repository }}
{{- include "mlops.imageRef" (dict "repository" $img.repository "tag" (default (default .Chart.AppVersion .Values.image.tag) $img.tag) "digest" $img.digest) }}
{{- else }}
{{- include "mlops.appImage" . }}
{{- end }}
{{- end }}

{{- define "mlops.postgresImage" -}}
{{- include "mlops.imageRef" .Values.postgresql.image }}
{{- end }}

{{- define "mlops.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------ service accounts */}}

{{- define "mlops.dagsterServiceAccount" -}}
{{- default (printf "%s-dagster" (include "mlops.fullname" .)) .Values.serviceAccount.dagsterName }}
{{- end }}

{{- define "mlops.workloadServiceAccount" -}}
{{- default (printf "%s-workload" (include "mlops.fullname" .)) .Values.serviceAccount.workloadName }}
{{- end }}

{{/* ------------------------------------------------------------------ security */}}

{{- define "mlops.podSecurityContext" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{- define "mlops.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end }}

{{/* Writable scratch space for a read-only root filesystem: /tmp and the image user's home. */}}
{{- define "mlops.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolumeSizeLimit }}
- name: home
  emptyDir:
    sizeLimit: {{ .Values.tmpVolumeSizeLimit }}
{{- end }}

{{- define "mlops.scratchVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/app
{{- end }}

{{/* nodeSelector / tolerations / affinity of one component's values. */}}
{{- define "mlops.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------ endpoints */}}


{{- define "mlops.postgresHost" -}}
{{- if .Values.postgresql.enabled }}
{{- printf "%s-postgresql.%s.svc.%s" (include "mlops.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- else }}
{{- required "postgresql.host is required when postgresql.enabled is false" .Values.postgresql.host }}
{{- end }}
{{- end }}

{{- define "mlops.mlflowServiceName" -}}
{{- printf "%s-mlflow" (include "mlops.fullname" .) }}
{{- end }}

{{- define "mlops.mlflowTrackingUri" -}}
{{- if .Values.mlflow.trackingUri }}
{{- .Values.mlflow.trackingUri }}
{{- else if .Values.mlflow.enabled }}
{{- printf "http://%s.%s.svc.%s:%v" (include "mlops.mlflowServiceName" .) .Release.Namespace .Values.clusterDomain .Values.mlflow.service.port }}
{{- else }}
{{- fail "mlflow.trackingUri is required when mlflow.enabled is false" }}
{{- end }}
{{- end }}

{{- define "mlops.rayClusterName" -}}
{{- printf "%s-ray" (include "mlops.fullname" .) }}
{{- end }}

{{/* RAY_ADDRESS: the in-chart RayCluster's client endpoint (KubeRay names the head Service
"<cluster>-head-svc"), or ray.address, or empty (tune runs in-process). */}}
{{- define "mlops.rayAddress" -}}
{{- if .Values.ray.enabled }}
{{- printf "ray://%s-head-svc.%s.svc.%s:%v" (include "mlops.rayClusterName" .) .Release.Namespace .Values.clusterDomain .Values.ray.clientPort }}
{{- else }}
{{- .Values.ray.address }}
{{- end }}
{{- end }}

{{/* Run Jobs live in the release namespace: they read its ConfigMaps and Secrets. */}}
{{- define "mlops.runNamespace" -}}
{{- .Release.Namespace }}
{{- end }}

{{/* ------------------------------------------------------------ config map names */}}

{{- define "mlops.appEnvConfigMap" -}}{{ include "mlops.fullname" . }}-app-env{{- end }}
{{- define "mlops.dagsterEnvConfigMap" -}}{{ include "mlops.fullname" . }}-dagster-env{{- end }}
{{- define "mlops.instanceConfigMap" -}}{{ include "mlops.fullname" . }}-dagster-instance{{- end }}
{{- define "mlops.workspaceConfigMap" -}}{{ include "mlops.fullname" . }}-dagster-workspace{{- end }}
{{- define "mlops.scriptsConfigMap" -}}{{ include "mlops.fullname" . }}-scripts{{- end }}
{{- define "mlops.codeServerName" -}}{{ include "mlops.fullname" . }}-dagster-code{{- end }}

{{/* Where the scripts ConfigMap is mounted, and the URL-composing launcher in it. */}}
{{- define "mlops.scriptsDir" -}}/opt/mlops/scripts{{- end }}
{{- define "mlops.withDbUrls" -}}{{ include "mlops.scriptsDir" . }}/with_db_urls.py{{- end }}

{{/* -------------------------------------------------------------- secret env vars */}}

{{- define "mlops.pgPasswordRef" -}}
valueFrom:
  secretKeyRef:
    name: {{ .Values.postgresql.auth.existingSecret }}
    key: {{ .Values.postgresql.auth.passwordKey }}
{{- end }}

{{/* DAGSTER_PG_PASSWORD (the rest of DAGSTER_PG_* is in the dagster-env ConfigMap). */}}
{{- define "mlops.dagsterPgPasswordEnv" -}}
- name: DAGSTER_PG_PASSWORD
  {{- include "mlops.pgPasswordRef" . | nindent 2 }}
{{- end }}

{{/* The secret half of the warehouse URL: WAREHOUSE_URL whole from warehouse.existingUrlSecret,
else WAREHOUSE_DB_PASSWORD, which with_db_urls.py joins to the WAREHOUSE_DB_* parts of the
app-env ConfigMap. Both only by secretKeyRef. */}}
{{- define "mlops.warehouseSecretEnv" -}}
{{- if .Values.warehouse.existingUrlSecret }}
- name: WAREHOUSE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.warehouse.existingUrlSecret }}
      key: {{ .Values.warehouse.existingUrlSecretKey }}
{{- else }}
- name: WAREHOUSE_DB_PASSWORD
  {{- include "mlops.pgPasswordRef" . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Environment of the prediction service's warehouse connection (the prediction log): the
WAREHOUSE_DB_* parts read from the app-env ConfigMap (the same keys the code server gets
through envFrom; WAREHOUSE_DB_PARAMS only when postgresql.sslMode is set) plus the secret half
above. The serving container runs under with_db_urls.py, which composes WAREHOUSE_URL. */}}
{{- define "mlops.servingWarehouseEnv" -}}
{{- if not .Values.warehouse.existingUrlSecret }}
{{- $cm := include "mlops.appEnvConfigMap" . }}
{{- $keys := list "WAREHOUSE_DB_HOST" "WAREHOUSE_DB_PORT" "WAREHOUSE_DB_USER" "WAREHOUSE_DB_NAME" }}
{{- if .Values.postgresql.sslMode }}{{ $keys = append $keys "WAREHOUSE_DB_PARAMS" }}{{ end }}
{{- range $keys }}
- name: {{ . }}
  valueFrom:
    configMapKeyRef:
      name: {{ $cm }}
      key: {{ . }}
{{- end }}
{{- end }}
{{ include "mlops.warehouseSecretEnv" . }}
{{- end }}

{{/* Environment of the code server AND of every run pod, apart from the ConfigMaps: secrets
(only by secretKeyRef; ALERT_WEBHOOK_URL for the run-failure sensor, which the code server
evaluates), RAY_ADDRESS, DAGSTER_CURRENT_IMAGE and the user's extraEnv. */}}
{{- define "mlops.codeEnv" -}}
{{ include "mlops.dagsterPgPasswordEnv" . }}
{{ include "mlops.warehouseSecretEnv" . }}
{{- if .Values.atmos.kmaServiceKey.existingSecret }}
- name: KMA_SERVICE_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.atmos.kmaServiceKey.existingSecret }}
      key: {{ .Values.atmos.kmaServiceKey.key }}
{{- end }}
{{- with .Values.dagster.alertWebhookUrl.existingSecret }}
- name: ALERT_WEBHOOK_URL
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.dagster.alertWebhookUrl.key }}
{{- end }}
{{- with include "mlops.rayAddress" . }}
- name: RAY_ADDRESS
  value: {{ . | quote }}
{{- end }}
- name: DAGSTER_CURRENT_IMAGE
  value: {{ include "mlops.appImage" . | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* ----------------------------------------------------------------- ingress */}}

{{/* Call with (dict "root" $ "component" "x" "ingress" .Values.x.ingress "service" name "port" p). */}}
{{- define "mlops.ingress" -}}
{{- $ing := .ingress }}
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  {{- include "mlops.metadata" (dict "root" .root "component" .component "name" .service "annotations" $ing.annotations) | nindent 2 }}
spec:
  {{- with $ing.className }}
  ingressClassName: {{ . }}
  {{- end }}
  {{- if $ing.tlsSecretName }}
  tls:
    - hosts:
        - {{ $ing.host | quote }}
      secretName: {{ $ing.tlsSecretName }}
  {{- end }}
  rules:
    - host: {{ required (printf "%s.ingress.host is required when the ingress is enabled" .component) $ing.host | quote }}
      http:
        paths:
          - path: {{ $ing.path }}
            pathType: Prefix
            backend:
              service:
                name: {{ .service }}
                port:
                  number: {{ .port }}
{{- end }}

{{/* Checksum of a rendered template, for rolling pods when their configuration changes. */}}
{{- define "mlops.checksum" -}}
{{- include (print .root.Template.BasePath "/" .file) .root | sha256sum }}
{{- end }}
