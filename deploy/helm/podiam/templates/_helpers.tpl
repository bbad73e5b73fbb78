{{/* Full name: the release name, or release-chart when it lacks the chart's name. */}}
{{- define "podiam.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "podiam.serverName" -}}{{ include "podiam.fullname" . }}-server{{- end -}}
{{- define "podiam.agentName" -}}{{ include "podiam.fullname" . }}-agent{{- end -}}

{{- define "podiam.serverSecret" -}}
{{- .Values.tls.serverSecretName | default (printf "%s-tls" (include "podiam.serverName" .)) -}}
{{- end -}}
{{- define "podiam.agentSecret" -}}
{{- .Values.tls.agentSecretName | default (printf "%s-tls" (include "podiam.agentName" .)) -}}
{{- end -}}

{{- define "podiam.serverAddress" -}}
{{- .Values.agent.serverAddress | default (printf "%s.%s.svc:%v" (include "podiam.serverName" .) .Release.Namespace .Values.server.port) -}}
{{- end -}}

{{- define "podiam.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "podiam.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component: call with (list . "server"). */}}
{{- define "podiam.selectorLabels" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ $.Chart.Name }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The server's command line, as a YAML list; every entry is a flag of
`podiam server`. Built as a list so that no value needs YAML quoting. */}}
{{- define "podiam.serverArgs" -}}
{{- $s := .Values.server -}}
{{- $a := list "server" -}}
{{- if $s.log.json }}{{ $a = append $a "--json-log" }}{{ end -}}
{{- $a = append $a (printf "--level=%s" $s.log.level) -}}
{{- $a = append $a (printf "--bind=%s:%d" $s.bindAddress (int64 $s.port)) -}}
{{- $a = concat $a (list "--cert=/etc/podiam/tls/tls.crt" "--key=/etc/podiam/tls/tls.key" "--ca=/etc/podiam/tls/ca.crt") -}}
{{- with $s.assumeRoleArn }}{{ $a = append $a (printf "--assume-role-arn=%s" .) }}{{ end -}}
{{- if $s.roleBaseArn }}{{ $a = append $a (printf "--role-base-arn=%s" $s.roleBaseArn) }}
{{- else if $s.roleBaseArnAutodetect }}{{ $a = append $a "--role-base-arn-autodetect" }}{{ end -}}
{{- with $s.region }}{{ $a = append $a (printf "--region=%s" .) }}{{ end -}}
{{- $a = append $a (printf "--session=%s" $s.session) -}}
{{- $a = append $a (printf "--session-duration=%s" $s.sessionDuration) -}}
{{- $a = append $a (printf "--session-refresh=%s" $s.sessionRefresh) -}}
{{- with $s.sessionNameTemplate }}{{ $a = append $a (printf "--session-name-template=%s" .) }}{{ end -}}
{{- with $s.sourceIdentityTemplate }}{{ $a = append $a (printf "--source-identity-template=%s" .) }}{{ end -}}
{{- with $s.sessionTags }}{{ $a = append $a (printf "--session-tags=%s" (join "," .)) }}{{ end -}}
{{- range $k, $v := $s.staticSessionTags }}{{ $a = append $a (printf "--static-session-tag=%s=%s" $k $v) }}{{ end -}}
{{- if $s.transitiveSessionTags }}{{ $a = append $a "--transitive-session-tags" }}{{ end -}}
{{- if $s.serviceAccountRoles }}{{ $a = append $a "--service-account-roles" }}{{ end -}}
{{- $a = append $a (printf "--sync=%s" $s.sync) -}}
{{- $a = append $a (printf "--pod-wait=%s" $s.podWait) -}}
{{- if $s.disableStrictNamespaceRegexp }}{{ $a = append $a "--disable-strict-namespace-regexp" }}{{ end -}}
{{- with $s.externalIdFrom }}{{ $a = append $a (printf "--external-id-from=%s" .) }}{{ end -}}
{{- if $s.disableNodeBinding }}{{ $a = append $a "--disable-node-binding" }}{{ end -}}
{{- $a = append $a (printf "--sts-rate=%v" $s.stsRate) -}}
{{- $a = append $a (printf "--sts-burst=%d" (int64 $s.stsBurst)) -}}
{{- $a = append $a (printf "--cache-max-entries=%d" (int64 $s.cacheMaxEntries)) -}}
{{- $a = append $a (printf "--drain-time=%s" $s.drainTime) -}}
{{- range $s.agentIdentities }}{{ $a = append $a (printf "--agent-identity=%s" .) }}{{ end -}}
{{- if $s.assumeRoleSecrets.enabled }}{{ $a = append $a "--assume-role-secrets" }}{{ end -}}
{{- $a = append $a (printf "--grpc-keepalive-time-duration=%s" $s.grpc.keepaliveTime) -}}
{{- $a = append $a (printf "--grpc-keepalive-timeout-duration=%s" $s.grpc.keepaliveTimeout) -}}
{{- $a = append $a (printf "--grpc-max-connection-idle-duration=%s" $s.grpc.maxConnectionIdle) -}}
{{- $a = append $a (printf "--grpc-max-connection-age-duration=%s" $s.grpc.maxConnectionAge) -}}
{{- $a = append $a (printf "--grpc-max-connection-age-grace-duration=%s" $s.grpc.maxConnectionAgeGrace) -}}
{{- /* Always set, metrics enabled or not: the listener also serves /readyz,
the readiness probe; server.metrics.enabled only decides the scrape
annotations. */ -}}
{{- $a = append $a (printf "--prometheus-listen-addr=0.0.0.0:%d" (int64 $s.metrics.port)) -}}
{{- toYaml (concat $a $s.extraArgs) -}}
{{- end -}}

{{/* The agent's command line, as a YAML list; every entry is a flag of
`podiam agent`. */}}
{{- define "podiam.agentArgs" -}}
{{- $g := .Values.agent -}}
{{- $a := list "agent" -}}
{{- if $g.log.json }}{{ $a = append $a "--json-log" }}{{ end -}}
{{- $a = append $a (printf "--level=%s" $g.log.level) -}}
{{- if $g.iptables }}{{ $a = append $a "--iptables" }}{{ end -}}
{{- /* Spelled out either way, so the chart's intent never depends on a default. */ -}}
{{- $a = append $a (ternary "--iptables-remove" "--no-iptables-remove" (eq $g.iptablesRemove true)) -}}
{{- $a = append $a (printf "--iptables-check-interval=%s" $g.iptablesCheckInterval) -}}
{{- $a = append $a (printf "--host-interface=%s" $g.hostInterface) -}}
{{- $a = append $a (printf "--port=%d" (int64 $g.port)) -}}
{{- $a = concat $a (list "--cert=/etc/podiam/tls/tls.crt" "--key=/etc/podiam/tls/tls.key" "--ca=/etc/podiam/tls/ca.crt") -}}
{{- $a = append $a (printf "--server-address=%s" (include "podiam.serverAddress" .)) -}}
{{- $a = append $a (printf "--gateway-timeout-creation=%s" $g.gatewayTimeoutCreation) -}}
{{- $a = append $a (printf "--grpc-keepalive-time-duration=%s" $g.grpc.keepaliveTime) -}}
{{- $a = append $a (printf "--grpc-keepalive-timeout-duration=%s" $g.grpc.keepaliveTimeout) -}}
{{- /* An empty --allow-route-regexp would match every path: omitted instead. */ -}}
{{- with $g.allowRouteRegexp }}{{ $a = append $a (printf "--allow-route-regexp=%s" .) }}{{ end -}}
{{- if $g.requireIMDSv2 }}{{ $a = append $a "--require-imdsv2" }}{{ end -}}
{{- with $g.metadataEndpoint }}{{ $a = append $a (printf "--metadata-endpoint=%s" .) }}{{ end -}}
{{- $a = append $a (printf "--max-requests-per-ip=%d" (int64 $g.maxRequestsPerIP)) -}}
{{- $a = append $a (printf "--credential-refresh=%s" $g.credentialRefresh) -}}
{{- if $g.metrics.enabled }}{{ $a = append $a (printf "--prometheus-listen-addr=0.0.0.0:%d" (int64 $g.metrics.port)) }}
{{- else }}{{ $a = append $a "--prometheus-listen-addr=" }}{{ end -}}
{{- toYaml (concat $a $g.extraArgs) -}}
{{- end -}}
