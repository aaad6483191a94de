{{/*
The job name: every object, TF_CONFIG address and label derives from it. Replica Services are
"<name>-evaluator-0" at the longest and a Service name has at most 63 characters, hence 51.
*/}}
{{- define "pml.name" -}}
{{- $name := .Values.name | default .Release.Name -}}
{{- if or (gt (len $name) 51) (not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name)) -}}
{{- fail (printf "name %q must be a DNS-1035 label (lowercase letters, digits, '-') of at most 51 characters" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/* TensorFlow's gRPC port; the chief serves the job state on the next one. */}}
{{- define "pml.port" -}}2222{{- end -}}

{{- define "pml.controlPort" -}}{{ add1 (include "pml.port" .) }}{{- end -}}

{{- define "pml.serviceAccountName" -}}
{{- .Values.service_account.name | default (include "pml.name" .) -}}
{{- end -}}

{{- define "pml.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: parallel-ml
parallel-ml/job: {{ include "pml.name" . }}
{{- with .Values.submission }}
parallel-ml/submission: {{ . | quote }}
{{- end }}
{{- with .Values.experiment }}
parallel-ml/experiment: {{ . | quote }}
{{- end }}
{{- end -}}

{{/*
The roles that have tasks, in TFJob's spelling too, as a YAML list of {role, type, count}.
The chief is always there: it coordinates.
*/}}
{{- define "pml.roles" -}}
{{- $r := .Values.replicas -}}
- {role: chief, type: Chief, count: 1}
{{- if gt (int $r.workers) 0 }}
- {role: worker, type: Worker, count: {{ int $r.workers }}}
{{- end }}
{{- if gt (int $r.ps) 0 }}
- {role: ps, type: PS, count: {{ int $r.ps }}}
{{- end }}
{{- if gt (int $r.evaluator) 0 }}
- {role: evaluator, type: Evaluator, count: {{ int $r.evaluator }}}
{{- end }}
{{- end -}}

{{/*
The cluster part of TF_CONFIG, as JSON: the same stable addresses the Kubeflow operator gives,
"<name>-<role>-<index>.<namespace>.svc:2222", with the evaluator listed like TFJob lists it.
*/}}
{{- define "pml.cluster" -}}
{{- $root := . -}}
{{- $cluster := dict -}}
{{- range $entry := (include "pml.roles" . | fromYamlArray) -}}
{{- $addresses := list -}}
{{- range $i := until (int $entry.count) -}}
{{- $addresses = append $addresses (printf "%s-%s-%d.%s.svc:%s" (include "pml.name" $root) $entry.role $i $root.Release.Namespace (include "pml.port" $root)) -}}
{{- end -}}
{{- $_ := set $cluster $entry.role $addresses -}}
{{- end -}}
{{- toJson $cluster -}}
{{- end -}}

{{/*
Where checkpoints go. The root filesystem is read-only, so a relative directory lands in the
scratch volume (and is lost with the pod: use gs:// or s3:// to keep a model).
*/}}
{{- define "pml.modelDir" -}}
{{- $dir := .Values.trainer.model_dir | default (printf "runs/%s" (include "pml.name" .)) -}}
{{- if or (hasPrefix "/" $dir) (contains "://" $dir) -}}
{{- $dir -}}
{{- else -}}
/scratch/{{ $dir }}
{{- end -}}
{{- end -}}

{{/*
A value as a command-line word. Values from JSON are all float64, and Go prints 1000000.0 as
1e+06, which an integer flag refuses.
*/}}
{{- define "pml.word" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/* `python -m pml_trainer` flags: each trainer value `some_name` becomes `--some-name VALUE`, and each of params KEY=VALUE `--task-param KEY=JSON`. */}}
{{- define "pml.args" -}}
{{- $trainer := merge (dict "model_dir" (include "pml.modelDir" .)) (omit .Values.trainer "model_dir") -}}
{{- /* Kueue admits each task's Job of a native job on its own (kueue pkg/controller/jobs/job), so a
worker may wait for its queued chief far longer than a pod takes to start: 6 h unless set. Bounded
all the same, so that a job whose chief failed before it came up does not hold quota for ever. */ -}}
{{- if and (eq .Values.mode "native") .Values.scheduling.queue (kindIs "invalid" .Values.trainer.chief_start_timeout) }}
{{- $_ := set $trainer "chief_start_timeout" 21600 }}
{{- end }}
{{- range $key, $value := $trainer }}
{{- if eq $key "params" }}
{{- range $name, $given := $value }}
- "--task-param"
- {{ printf "%s=%s" $name (toJson $given) | quote }}
{{- end }}
{{- else if not (kindIs "invalid" $value) }}
- {{ printf "--%s" ($key | replace "_" "-") | quote }}
- {{ include "pml.word" $value | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
The pod template of one task. Parameters: root (the chart context), role, index (native mode
only: TFJob's operator labels its own pods), tfConfig (native mode: the operator injects
TF_CONFIG itself) and restartPolicy (native mode: TFJob sets it per replica type).
*/}}
{{- define "pml.podTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $role := index $v.roles .role -}}
metadata:
  labels:
    {{- include "pml.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .role }}
    parallel-ml/role: {{ .role }}
    {{- if hasKey . "index" }}
    parallel-ml/index: {{ .index | quote }}
    {{- end }}
  annotations:
    # Kubeflow profile namespaces inject an Istio sidecar, which keeps the pod Running after
    # tensorflow exits, so the job never ends. The Kubeflow SDK opts its pods out the same way
    # (kubeflow/trainer v1.9.4, sdk/python/kubeflow/training/utils/utils.py).
    sidecar.istio.io/inject: "false"
spec:
  {{- with .restartPolicy }}
  restartPolicy: {{ . }}
  {{- end }}
  serviceAccountName: {{ include "pml.serviceAccountName" $root }}
  # Training talks to storage, never to the Kubernetes API.
  automountServiceAccountToken: false
  # Per-replica Services would otherwise each add a dozen variables to every task.
  enableServiceLinks: false
  {{- with $v.scheduling.priority_class }}
  priorityClassName: {{ . | quote }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: {{ int $v.security.run_as_user }}
    runAsGroup: {{ int $v.security.run_as_group }}
    fsGroup: {{ int $v.security.run_as_group }}
    seccompProfile:
      type: RuntimeDefault
  {{- with $role.node_selector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $role.tolerations }}
  tolerations:
    {{- range . }}
    -
      {{- range $key, $value := . }}
      {{- if not (kindIs "invalid" $value) }}
      {{ $key }}: {{ $value | quote }}
      {{- end }}
      {{- end }}
    {{- end }}
  {{- end }}
  containers:
    # TFJob injects TF_CONFIG only into the container named tensorflow.
    - name: tensorflow
      image: {{ $v.image | quote }}
      imagePullPolicy: {{ $v.image_pull_policy }}
      args:
        {{- include "pml.args" $root | trim | nindent 8 }}
      env:
        {{- with .tfConfig }}
        - name: TF_CONFIG
          value: {{ . | quote }}
        {{- end }}
        - name: HOME
          value: /scratch
        - name: TMPDIR
          value: /tmp
        # The image the task runs, which the trainer records in result.json.
        - name: PML_IMAGE
          value: {{ $v.image | quote }}
        # The job the task belongs to, in every pointer its chief writes (trainer/checkpoints.py):
        # a second job on the same model dir is refused rather than fenced back and forth.
        - name: PML_JOB
          value: {{ printf "%s/%s" $root.Release.Namespace (include "pml.name" $root) | quote }}
        {{- with $root.Values.submission }}
        # Which submission of the job, recorded in result.json: `pmlctl wait` tells this job's
        # result from an earlier run's when a short TTL deleted the job (deploy/k8s/target.py, _collected).
        - name: PML_SUBMISSION
          value: {{ . | quote }}
        {{- end }}
        {{- if gt (int $v.replicas.ps) 0 }}
        # TensorFlow's parameter server guide asks for it on every task: a failed RPC then
        # surfaces as an error instead of hanging the coordinator.
        - name: GRPC_FAIL_FAST
          value: use_caller
        {{- end }}
        {{- range $key, $value := $v.env }}
        - name: {{ $key | quote }}
          value: {{ $value | quote }}
        {{- end }}
        {{- with $v.credentials }}
        {{- $secret := .secret }}
        {{- range $key, $secretKey := .env }}
        - name: {{ $key | quote }}
          valueFrom:
            secretKeyRef:
              name: {{ $secret | quote }}
              key: {{ $secretKey | quote }}
        {{- end }}
        {{- end }}
      ports:
        - name: tfjob-port
          containerPort: {{ include "pml.port" $root }}
          protocol: TCP
        {{- if eq .role "chief" }}
        - name: control
          containerPort: {{ include "pml.controlPort" $root }}
          protocol: TCP
        {{- end }}
      resources:
        {{- include "pml.resources" $role.resources | nindent 8 }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        runAsNonRoot: true
        capabilities:
          drop: [ALL]
      volumeMounts:
        - name: scratch
          mountPath: /scratch
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: scratch
      emptyDir: {}
    - name: tmp
      emptyDir: {}
{{- end -}}

{{/*
Requests and limits of one role. Memory's limit equals its request, which keeps the pod last in
line for eviction; CPU has no limit because throttling stalls TensorFlow's thread pools; GPUs
can only be limits.
*/}}
{{- define "pml.resources" -}}
{{- $requests := dict -}}
{{- $limits := dict -}}
{{- if not (kindIs "invalid" .cpu) -}}
{{- $_ := set $requests "cpu" (include "pml.word" .cpu) -}}
{{- end -}}
{{- if not (kindIs "invalid" .memory) -}}
{{- $_ := set $requests "memory" (include "pml.word" .memory) -}}
{{- $_ := set $limits "memory" (include "pml.word" .memory) -}}
{{- end -}}
{{- if gt (int (.gpu | default 0)) 0 -}}
{{- $_ := set $limits "nvidia.com/gpu" (int .gpu) -}}
{{- end -}}
{{- $resources := dict -}}
{{- with $requests }}{{ $_ := set $resources "requests" . }}{{ end -}}
{{- with $limits }}{{ $_ := set $resources "limits" . }}{{ end -}}
{{- toYaml $resources -}}
{{- end -}}
