#!/usr/bin/env bash
# The main job on its embedded default: the product on a local cluster.
#
#   1. a local control plane with the mixed fleet of the `dev` profile (one real x86 class
#      whose pods run as processes here, one real arm64 class whose pods run here under
#      qemu-user and which the sample leaves out, as deployments do unless they name it, the
#      other classes simulated by kwok), the CRD and a Gateway API gateway (Traefik);
#   2. the operator (`infleet run`, in the background: `infleet dev operator`);
#   3. the sample: an engine store, a real model (EfficientNet-Lite0 written onto a claim by
#      a Job) and the InferenceDeployment of examples/sample/deployment.yaml;
#   4. wait until it is Available (a real inference has succeeded on every serving class),
#      show `kubectl get idep` and the per-class status;
#   5. one OIP request through the deployment's endpoint (the gateway), checked against
#      ONNX Runtime on the same model here.
#
#   hack/try.sh            # uses (or starts) the dev cluster named "default"
#   INFLEET_TRY_CLUSTER=demo hack/try.sh
#
# Everything stays up afterwards; `.venv/bin/infleet dev down` stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."

name="${INFLEET_TRY_CLUSTER:-default}"
wait_s="${INFLEET_TRY_TIMEOUT:-900}"
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

step "the operator"
"$infleet" dev operator --name "$name"

step "an invalid InferenceDeployment is refused by the API server (CEL: maxReplicas >= minReplicas)"
if kubectl apply -f - <<'EOF2'
apiVersion: infleet.dev/v1alpha1
kind: InferenceDeployment
metadata: {name: refused, namespace: default}
spec:
  model: {uri: "s3://models/m.onnx"}
  slo: {latencyP99Ms: 25}
  scaling: {minReplicas: 5, maxReplicas: 2}
EOF2
then
    echo "try: the API server accepted an invalid InferenceDeployment" >&2
    exit 1
fi

step "the sample: engine store and model claims, the model written by a Job"
kubectl apply -f examples/sample/storage.yaml
kubectl apply -f examples/sample/model-job.yaml
if ! kubectl wait -n default --for=condition=Complete job/sample-model --timeout="${wait_s}s"; then
    kubectl describe -n default job/sample-model >&2
    kubectl logs -n default job/sample-model >&2 || true
    exit 1
fi

step "the sample InferenceDeployment (examples/sample/deployment.yaml)"
kubectl apply -f examples/sample/deployment.yaml
echo "waiting until it is Available (built, verified, served, a real inference answered on every"
echo "serving class; a first build of each class takes a minute or two here) ..."
if ! kubectl wait -n default --for=condition=Available idep/efficientnet --timeout="${wait_s}s"; then
    kubectl get idep -n default -o wide >&2
    kubectl get idep -n default efficientnet -o yaml >&2
    "$infleet" dev operator --name "$name" >&2  # says where its log is
    exit 1
fi

step "kubectl get idep"
kubectl get idep -n default -o wide

step "per class: backend, precision, engine, replicas, traffic weight"
kubectl get idep -n default efficientnet -o json | .venv/bin/python hack/show-classes.py

step "one OIP request through the deployment's endpoint (the gateway), checked against the model"
endpoint=$(kubectl get idep -n default efficientnet -o jsonpath='{.status.endpoint}')
reference="$(mktemp -d)/efficientnet-lite0.onnx"
"$infleet" zoo efficientnet-lite0 --output "$reference" >/dev/null
echo "endpoint $endpoint, called through the gateway at $INFLEET_GATEWAY"
"$infleet" infer "$INFLEET_GATEWAY" efficientnet --host "${endpoint#http://}" --batch 4 \
    --binary --reference "$reference" --metric cosine --max-deviation 0.01
rm -rf "$(dirname "$reference")"

cat <<EOF

Everything keeps running. Use it with:
  eval "\$($infleet dev env --name $name)"
  kubectl get idep,deployments,jobs,pods -n default -o wide
  $infleet infer \$INFLEET_GATEWAY efficientnet --host ${endpoint#http://}
Stop it with: $infleet dev down --name $name
EOF
