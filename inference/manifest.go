package inference

import "time"

// Manifest is manifest.json of a model bundle (DESIGN.md §3). It is decoded
// strictly: an unknown key is an error, so that a typo in a hand-edited
// manifest is caught instead of silently falling back to a default.
type Manifest struct {
	Name         string            `json:"name"`
	Version      string            `json:"version"`
	Created      time.Time         `json:"created"`
	Architecture string            `json:"architecture"`
	Classes      []string          `json:"classes"`
	Input        InputSpec         `json:"input"`
	Outputs      OutputSpec        `json:"outputs"`
	Head         *string           `json:"head"`
	Threshold    float64           `json:"threshold"`
	Files        map[string]string `json:"files"`
	Baseline     string            `json:"baseline,omitempty"`
	// Signature is base64 ed25519 over the canonical manifest (this document
	// without the signature key, keys sorted, no insignificant whitespace).
	Signature string `json:"signature,omitempty"`
}

// InputSpec says how an image becomes the network's input tensor:
// value = (pixel*Scale - Mean[c]) / Std[c], channels in Color order.
type InputSpec struct {
	Name   string     `json:"name"`
	Width  int        `json:"width"`
	Height int        `json:"height"`
	Layout string     `json:"layout"` // NCHW or NHWC
	Color  string     `json:"color"`  // RGB or BGR
	Scale  float64    `json:"scale"`
	Mean   [3]float64 `json:"mean"`
	Std    [3]float64 `json:"std"`
}

// OutputSpec names the ONNX outputs the engine reads.
type OutputSpec struct {
	Features    string `json:"features"`
	FeaturesDim int    `json:"features_dim"`
	// Probabilities is the name of a [N, len(Classes)] output, or nil when the
	// Go head computes them from the features.
	Probabilities *string `json:"probabilities"`
}
