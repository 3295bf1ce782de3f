{{/* Checks across several values, which values.schema.json cannot express with a clear
message. Included from configmaps.yaml, which every render evaluates. */}}
{{- define "mlops.validate" -}}
{{- $m := .Values.mlflow }}
{{- if and $m.enabled (eq $m.artifacts.type "pvc") (gt (int $m.replicas) 1) (ne $m.artifacts.pvc.accessMode "ReadWriteMany") }}
{{- fail (printf "mlflow.replicas=%v needs a shared artifact store: set mlflow.artifacts.type=s3 or mlflow.artifacts.pvc.accessMode=ReadWriteMany" $m.replicas) }}
{{- end }}
{{- $s := .Values.serving }}
{{- if and $s.enabled $s.pdb.enabled }}
{{- $min := ternary $s.autoscaling.minReplicas $s.replicas $s.autoscaling.enabled }}
{{- if ge (int $s.pdb.minAvailable) (int $min) }}
{{- fail (printf "serving.pdb.minAvailable=%v must be below the serving replica count (%v), or node drains block forever" $s.pdb.minAvailable $min) }}
{{- end }}
{{- end }}
{{- if and $s.enabled $s.autoscaling.enabled (gt (int $s.autoscaling.minReplicas) (int $s.autoscaling.maxReplicas)) }}
{{- fail "serving.autoscaling.minReplicas must not exceed serving.autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.ray.enabled .Values.ray.address }}
{{- fail "set either ray.enabled (an in-chart RayCluster) or ray.address (an existing cluster), not both" }}
{{- end }}
{{- if and .Values.ray.enabled (not .Values.dagster.enabled) }}
{{- fail "ray.enabled needs dagster.enabled: the Ray cluster only serves the Dagster runs" }}
{{- end }}
{{- $r := .Values.ray.worker }}
{{- if and .Values.ray.enabled (or (gt (int $r.minReplicas) (int $r.replicas)) (gt (int $r.replicas) (int $r.maxReplicas))) }}
{{- fail "ray.worker needs minReplicas <= replicas <= maxReplicas" }}
{{- end }}
{{- end }}
