package inference

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// ManifestFile is the name of the manifest inside a bundle.
const ManifestFile = "manifest.json"

// BackboneFile is the ONNX feature extractor every bundle carries; the
// manifest has no field naming it, so the name is fixed.
const BackboneFile = "backbone.onnx"

// HeadFile is the conventional name of the head; the manifest's "head"
// field is what counts.
const HeadFile = "head.safetensors"

// PositiveClass is the class whose probability is compared with the
// manifest's threshold.
const PositiveClass = "parasitized"

// maxManifestSize bounds manifest.json; a real one is about 1 KiB.
const maxManifestSize = 1 << 20

// Input sizes above this are a typo (the network takes cell crops).
const maxInputSide = 4096

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
	// Signer is the base64 ed25519 public key that made Signature. It is part
	// of the signed content, so it cannot be swapped without breaking the
	// signature; it lets verification tell "signed by a key we do not trust"
	// (ErrUntrusted) from "altered after signing" (ErrSignature).
	Signer string `json:"signer,omitempty"`
	// Signature is base64 ed25519 over CanonicalManifest of this document
	// (see sign.go).
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

// ClassIndex returns the position of name in Classes, or -1.
func (m *Manifest) ClassIndex(name string) int { return slices.Index(m.Classes, name) }

// requiredKeys lists the keys that must be present (even when their value
// may be null, as for head): a missing key would otherwise decode as a zero
// value that looks deliberate.
var requiredKeys = map[string][]string{
	"":        {"name", "version", "created", "architecture", "classes", "input", "outputs", "head", "threshold", "files"},
	"input":   {"name", "width", "height", "layout", "color", "scale", "mean", "std"},
	"outputs": {"features", "features_dim"},
}

// manifestKeys are the keys each object may hold, spelled exactly:
// encoding/json matches struct fields case-insensitively, and a manifest
// holding both "threshold" and "Threshold" must not be accepted as meaning
// one of them.
var manifestKeys = map[string][]string{
	"":        {"name", "version", "created", "architecture", "classes", "input", "outputs", "head", "threshold", "files", "baseline", "signer", "signature"},
	"input":   {"name", "width", "height", "layout", "color", "scale", "mean", "std"},
	"outputs": {"features", "features_dim", "probabilities"},
}

func checkExactKeys(obj map[string]json.RawMessage, allowed []string, prefix string) error {
	for k := range obj {
		if !slices.Contains(allowed, k) {
			return fmt.Errorf("%w: %s: unknown field %q (known: %s)", ErrManifest, ManifestFile, prefix+k, strings.Join(allowed, ", "))
		}
	}
	return nil
}

// ParseManifest decodes and validates manifest.json. It checks the document
// alone (syntax, unknown and duplicate keys, required fields, value ranges,
// file names); files on disk and the signature are checked by OpenBundle.
// Errors wrap ErrManifest and name the field.
func ParseManifest(data []byte) (*Manifest, error) {
	m, err := decodeManifest(data, true)
	if err != nil {
		return nil, err
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// decodeManifest does the syntactic part of ParseManifest; sealing decodes a
// manifest whose files are yet to be computed (withFiles false). Unknown
// keys are reported before missing ones: a misspelt key is both, and its
// spelling is the useful part.
func decodeManifest(data []byte, withFiles bool) (*Manifest, error) {
	if len(data) > maxManifestSize {
		return nil, fmt.Errorf("%w: %s is %d bytes, more than the %d allowed", ErrManifest, ManifestFile, len(data), maxManifestSize)
	}
	if err := checkJSONKeys(data); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrManifest, ManifestFile, err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrManifest, ManifestFile, err)
	}
	if top == nil {
		return nil, fmt.Errorf("%w: %s: top level must be a JSON object", ErrManifest, ManifestFile)
	}
	if err := checkExactKeys(top, manifestKeys[""], ""); err != nil {
		return nil, err
	}
	for _, k := range requiredKeys[""] {
		if _, ok := top[k]; !ok && (withFiles || k != "files") {
			return nil, fmt.Errorf("%w: %s: field %q is required", ErrManifest, ManifestFile, k)
		}
	}
	for _, obj := range []string{"input", "outputs"} {
		var sub map[string]json.RawMessage
		if err := json.Unmarshal(top[obj], &sub); err != nil || sub == nil {
			return nil, fmt.Errorf("%w: %s: field %q must be a JSON object", ErrManifest, ManifestFile, obj)
		}
		if err := checkExactKeys(sub, manifestKeys[obj], obj+"."); err != nil {
			return nil, err
		}
		for _, k := range requiredKeys[obj] {
			if _, ok := sub[k]; !ok {
				return nil, fmt.Errorf("%w: %s: field %q is required", ErrManifest, ManifestFile, obj+"."+k)
			}
		}
		if obj != "input" {
			continue
		}
		// encoding/json fills a [3]float64 from an array of any length
		// (dropping extras, zeroing the missing), so the length is checked
		// on the raw value.
		for _, k := range []string{"mean", "std"} {
			var v []float64
			if err := json.Unmarshal(sub[k], &v); err != nil || len(v) != 3 {
				return nil, fmt.Errorf("%w: %s: field %q must be an array of 3 numbers, one per channel, got %s", ErrManifest, ManifestFile, "input."+k, truncate(string(sub[k]), 60))
			}
		}
	}

	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrManifest, ManifestFile, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: %s: data after the JSON object", ErrManifest, ManifestFile)
	}
	return &m, nil
}

// Validate checks field values. The error wraps ErrManifest and names the
// field, what it holds and what was expected.
func (m *Manifest) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s: field %q: %s", ErrManifest, ManifestFile, field, fmt.Sprintf(format, args...))
	}
	if strings.TrimSpace(m.Name) == "" {
		return bad("name", "must not be empty")
	}
	if err := checkVersion(m.Version); err != nil {
		return bad("version", "%v", err)
	}
	if m.Created.IsZero() {
		return bad("created", "must be an RFC 3339 time")
	}
	if strings.TrimSpace(m.Architecture) == "" {
		return bad("architecture", "must not be empty")
	}
	if len(m.Classes) < 2 {
		return bad("classes", "needs at least 2 classes, got %d", len(m.Classes))
	}
	seen := map[string]bool{}
	for i, c := range m.Classes {
		if strings.TrimSpace(c) == "" {
			return bad(fmt.Sprintf("classes[%d]", i), "must not be empty")
		}
		if seen[c] {
			return bad(fmt.Sprintf("classes[%d]", i), "duplicate class %q", c)
		}
		seen[c] = true
	}
	if !seen[PositiveClass] {
		return bad("classes", "must contain %q, got %q", PositiveClass, m.Classes)
	}

	in := m.Input
	if strings.TrimSpace(in.Name) == "" {
		return bad("input.name", "must name the ONNX input")
	}
	if in.Width < 1 || in.Width > maxInputSide {
		return bad("input.width", "must be in 1..%d, got %d", maxInputSide, in.Width)
	}
	if in.Height < 1 || in.Height > maxInputSide {
		return bad("input.height", "must be in 1..%d, got %d", maxInputSide, in.Height)
	}
	if in.Layout != "NCHW" && in.Layout != "NHWC" {
		return bad("input.layout", `must be "NCHW" or "NHWC", got %q`, in.Layout)
	}
	if in.Color != "RGB" && in.Color != "BGR" {
		return bad("input.color", `must be "RGB" or "BGR", got %q`, in.Color)
	}
	if !(in.Scale > 0) || math.IsInf(in.Scale, 0) {
		return bad("input.scale", "must be a positive finite number, got %v", in.Scale)
	}
	for c := range 3 {
		if math.IsNaN(in.Mean[c]) || math.IsInf(in.Mean[c], 0) {
			return bad(fmt.Sprintf("input.mean[%d]", c), "must be finite, got %v", in.Mean[c])
		}
		if !(in.Std[c] > 0) || math.IsInf(in.Std[c], 0) {
			return bad(fmt.Sprintf("input.std[%d]", c), "must be a positive finite number, got %v", in.Std[c])
		}
	}

	out := m.Outputs
	if m.Head != nil || out.Features != "" {
		if strings.TrimSpace(out.Features) == "" {
			return bad("outputs.features", "must name the ONNX features output (the head reads it)")
		}
		if out.FeaturesDim < 1 || out.FeaturesDim > 1<<16 {
			return bad("outputs.features_dim", "must be in 1..%d, got %d", 1<<16, out.FeaturesDim)
		}
	}
	if out.Probabilities != nil && strings.TrimSpace(*out.Probabilities) == "" {
		return bad("outputs.probabilities", "must be null or name an ONNX output")
	}
	if m.Head == nil && out.Probabilities == nil {
		return bad("head", "is null, so outputs.probabilities must name the ONNX probabilities output")
	}
	if !(m.Threshold > 0 && m.Threshold < 1) {
		return bad("threshold", "must be strictly between 0 and 1, got %v", m.Threshold)
	}

	if len(m.Files) == 0 {
		return bad("files", "must list the bundle's files with their sha256")
	}
	for name, sum := range m.Files {
		if err := checkFileName(name); err != nil {
			return bad("files", "%q: %v", name, err)
		}
		if err := checkSHA256Hex(sum); err != nil {
			return bad("files."+name, "%v", err)
		}
	}
	if _, ok := m.Files[BackboneFile]; !ok {
		return bad("files", "must list %s", BackboneFile)
	}
	if m.Head != nil {
		if _, ok := m.Files[*m.Head]; !ok {
			return bad("head", "names %q, which is not listed in files", *m.Head)
		}
	}
	if m.Baseline != "" {
		if _, ok := m.Files[m.Baseline]; !ok {
			return bad("baseline", "names %q, which is not listed in files", m.Baseline)
		}
	}
	if (m.Signature == "") != (m.Signer == "") {
		return bad("signer", "signer and signature must be both present or both absent")
	}
	if m.Signer != "" {
		if _, err := decodeKey(m.Signer, 32); err != nil {
			return bad("signer", "%v", err)
		}
		if _, err := decodeKey(m.Signature, 64); err != nil {
			return bad("signature", "%v", err)
		}
	}
	return nil
}

// checkVersion keeps versions usable as an MQTT topic level and a folder name
// (DESIGN.md §3: the version appears in …/model/chunk/{version}/{i}).
func checkVersion(v string) error {
	if v == "" {
		return errors.New("must not be empty")
	}
	if len(v) > 64 {
		return fmt.Errorf("must be at most 64 characters, got %d", len(v))
	}
	for _, r := range v {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(".-_+", r)
		if !ok {
			return fmt.Errorf("%q: only letters, digits and . - _ + are allowed", v)
		}
	}
	return nil
}

// checkFileName accepts plain names at the top of the bundle: bundles are
// flat, which keeps tar extraction and sealing simple and safe.
func checkFileName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return errors.New("not a file name")
	case strings.ContainsAny(name, `/\`):
		return errors.New("must be a plain file name (bundles are flat, no folders)")
	case name == ManifestFile:
		return errors.New("the manifest cannot list itself")
	case !filepath.IsLocal(name):
		return errors.New("not a local file name")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return errors.New("contains a control character")
		}
	}
	return nil
}

func checkSHA256Hex(s string) error {
	if len(s) != 64 {
		return fmt.Errorf("sha256 must be 64 lowercase hex digits, got %d characters", len(s))
	}
	if _, err := hex.DecodeString(s); err != nil || strings.ToLower(s) != s {
		return fmt.Errorf("sha256 must be 64 lowercase hex digits, got %q", s)
	}
	return nil
}

func decodeKey(s string, size int) ([]byte, error) {
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("not standard base64: %v", err)
	}
	if len(b) != size {
		return nil, fmt.Errorf("must decode to %d bytes, got %d", size, len(b))
	}
	return b, nil
}

// maxJSONDepth bounds nesting; a manifest is three levels deep.
const maxJSONDepth = 32

// checkJSONKeys rejects duplicate object keys anywhere in data and nesting
// deeper than maxJSONDepth. encoding/json keeps the last of duplicate keys;
// a signed document must mean one thing only, so duplicates are refused.
func checkJSONKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	type frame struct {
		obj     bool
		keys    map[string]bool
		wantKey bool
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			if len(stack) != 0 {
				return errors.New("unexpected end of JSON")
			}
			return nil
		}
		if err != nil {
			return err
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{', '[':
				if top != nil && top.obj {
					top.wantKey = true
				}
				if len(stack) >= maxJSONDepth {
					return fmt.Errorf("nested deeper than %d levels", maxJSONDepth)
				}
				stack = append(stack, &frame{obj: d == '{', keys: map[string]bool{}, wantKey: true})
			case '}', ']':
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].obj {
					stack[len(stack)-1].wantKey = true
				}
			}
			continue
		}
		if top != nil && top.obj {
			if top.wantKey {
				k := tok.(string)
				if top.keys[k] {
					return fmt.Errorf("duplicate key %q", k)
				}
				top.keys[k] = true
				top.wantKey = false
			} else {
				top.wantKey = true
			}
		}
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
