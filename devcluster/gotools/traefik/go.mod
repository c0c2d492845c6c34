// Pins of the dev cluster's Gateway API implementation: Traefik and the Gateway API release whose
// standard-channel CRDs it supports (the one Traefik's own go.mod requires; `infleet dev tools`
// checks that they agree). Not a module that is built: Traefik's go.mod has replace/exclude
// directives, which count only in the main module, so `infleet dev tools` builds ./cmd/traefik
// inside a copy of Traefik's own module, and takes the CRDs from the gateway-api module's zip
// (config/crd/standard). go.sum holds the hashes both downloads must match.
//
// v3.7.10, not the newest v3.7.x: v3.7.11 and later replace github.com/abbot/go-http-auth with a
// fork version that the Go module proxy does not serve, so they cannot be built from it.
module infleet.dev/gotools/traefik

go 1.26.0

require (
	github.com/traefik/traefik/v3 v3.7.10
	sigs.k8s.io/gateway-api v1.6.1
)
