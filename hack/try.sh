#!/usr/bin/env bash
# The main job on its embedded default: a local control plane with the simulated mixed fleet
# of the `dev` profile, the CRD applied, the sample InferenceDeployment accepted, an invalid
# one refused by the API server itself, and the plan infleet makes for the sample on that fleet.
#
#   hack/try.sh            # uses (or starts) the dev cluster named "default"
#   INFLEET_TRY_CLUSTER=demo hack/try.sh
#
# The cluster stays up afterwards; `.venv/bin/infleet dev down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

name="${INFLEET_TRY_CLUSTER:-default}"
infleet=.venv/bin/infleet
if [[ ! -x "$infleet" ]]; then
    echo "try: $infleet is missing; run hack/bootstrap.sh first" >&2
    exit 1
fi

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "local cluster '$name' (profile dev)"
if "$infleet" dev status --name "$name" >/dev/null 2>&1; then
    "$infleet" dev status --name "$name"
else
    "$infleet" dev up --name "$name"
fi
eval "$("$infleet" dev env --name "$name")"

step "the fleet: node classes as the labels describe them"
kubectl get nodes -L nvidia.com/gpu.product,kubernetes.io/arch,node.kubernetes.io/instance-type

step "the sample InferenceDeployment (examples/deployment.yaml)"
kubectl apply -f examples/deployment.yaml
kubectl get inferencedeployments -n default

step "an invalid one is refused by the API server (CEL rule maxReplicas >= minReplicas)"
if kubectl apply -f - <<'EOF'
apiVersion: infleet.dev/v1alpha1
kind: InferenceDeployment
metadata: {name: refused, namespace: default}
spec:
  model: {uri: "s3://models/m.onnx"}
  slo: {latencyP99Ms: 25}
  scaling: {minReplicas: 5, maxReplicas: 2}
EOF
then
    echo "try: the API server accepted an invalid InferenceDeployment" >&2
    exit 1
fi

step "what infleet plans for it on this fleet at 3,000 requests/s"
"$infleet" plan -f examples/deployment.yaml --kubeconfig "$KUBECONFIG" \
    --profiles examples/profiles-dev.yaml --config examples/operator-config.yaml --demand 3000

cat <<EOF

The cluster keeps running. Use it with:
  eval "\$($infleet dev env --name $name)"
  kubectl get nodes,inferencedeployments -A
Stop it with: $infleet dev down --name $name
EOF
