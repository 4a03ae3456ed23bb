package inference

import (
	"fmt"
	"math"
	"slices"
)

// Head is the classifier head of a bundle, run in Go on the backbone's pooled
// features: Dense(in->hidden) ReLU, Dense(hidden->classes), softmax. It is
// the head of the seed article (hidden = 100); dropout is the identity at
// inference. Weights are kept in float64 and sums accumulate in float64, so
// the result matches torch's float32 head to well within 1e-5.
//
// A Head is immutable after loading and safe for concurrent use.
type Head struct {
	in, hidden, classes int
	w1                  []float64 // [hidden][in], PyTorch layout (out x in)
	b1                  []float64 // [hidden]
	w2t                 []float64 // [hidden][classes]: fc2.weight transposed
	b2                  []float64 // [classes]
}

// Head tensor names in head.safetensors (torch.nn.Linear's state_dict keys
// for layers named fc1 and fc2).
const (
	HeadFC1Weight = "fc1.weight"
	HeadFC1Bias   = "fc1.bias"
	HeadFC2Weight = "fc2.weight"
	HeadFC2Bias   = "fc2.bias"
)

// stackFeatures is the widest feature vector Probabilities handles without
// allocating (MobileNetV3-Small: 576, -Large: 960).
const stackFeatures = 2048

// maxHeadHidden bounds the hidden width; the seed head has 100.
const maxHeadHidden = 1 << 14

// LoadHead builds a Head from a safetensors file's bytes. The dimensions are
// checked against what the manifest declares: inDim = outputs.features_dim,
// classes = len(classes). Errors wrap ErrHead (or ErrSafetensors).
func LoadHead(data []byte, inDim, classes int) (*Head, error) {
	st, err := ParseSafetensors(data)
	if err != nil {
		return nil, err
	}
	want := []string{HeadFC1Weight, HeadFC1Bias, HeadFC2Weight, HeadFC2Bias}
	var extra []string
	for _, n := range st.Names() {
		if !slices.Contains(want, n) {
			extra = append(extra, n)
		}
	}
	if len(extra) > 0 {
		return nil, fmt.Errorf("%w: unexpected tensors %q (want exactly %q)", ErrHead, extra, want)
	}
	vals := make(map[string][]float32, 4)
	shapes := make(map[string][]int, 4)
	for _, n := range want {
		t, ok := st.Tensors[n]
		if !ok {
			return nil, fmt.Errorf("%w: tensor %q is missing", ErrHead, n)
		}
		v, err := t.Float32s()
		if err != nil {
			return nil, fmt.Errorf("%w: tensor %q: %v", ErrHead, n, err)
		}
		vals[n], shapes[n] = v, t.Shape
	}
	s1 := shapes[HeadFC1Weight]
	if len(s1) != 2 {
		return nil, fmt.Errorf("%w: tensor %q: shape %v, want [hidden, %d]", ErrHead, HeadFC1Weight, s1, inDim)
	}
	hidden := s1[0]
	checks := []struct {
		name string
		want []int
	}{
		{HeadFC1Weight, []int{hidden, inDim}},
		{HeadFC1Bias, []int{hidden}},
		{HeadFC2Weight, []int{classes, hidden}},
		{HeadFC2Bias, []int{classes}},
	}
	for _, c := range checks {
		if !slices.Equal(shapes[c.name], c.want) {
			return nil, fmt.Errorf("%w: tensor %q: shape %v, want %v (outputs.features_dim=%d, %d classes)", ErrHead, c.name, shapes[c.name], c.want, inDim, classes)
		}
	}
	return NewHead(inDim, hidden, classes, vals[HeadFC1Weight], vals[HeadFC1Bias], vals[HeadFC2Weight], vals[HeadFC2Bias])
}

// NewHead builds a Head from weights in PyTorch layout: w1 [hidden][in],
// b1 [hidden], w2 [classes][hidden], b2 [classes]. Non-finite weights are
// rejected.
func NewHead(in, hidden, classes int, w1, b1, w2, b2 []float32) (*Head, error) {
	if in < 1 || hidden < 1 || hidden > maxHeadHidden || classes < 2 {
		return nil, fmt.Errorf("%w: dimensions in=%d hidden=%d classes=%d (want in>=1, 1<=hidden<=%d, classes>=2)", ErrHead, in, hidden, classes, maxHeadHidden)
	}
	sizes := []struct {
		name string
		v    []float32
		n    int
	}{
		{HeadFC1Weight, w1, hidden * in}, {HeadFC1Bias, b1, hidden},
		{HeadFC2Weight, w2, classes * hidden}, {HeadFC2Bias, b2, classes},
	}
	for _, s := range sizes {
		if len(s.v) != s.n {
			return nil, fmt.Errorf("%w: %s has %d values, want %d", ErrHead, s.name, len(s.v), s.n)
		}
		for i, x := range s.v {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				return nil, fmt.Errorf("%w: %s[%d] is %v", ErrHead, s.name, i, x)
			}
		}
	}
	h := &Head{
		in: in, hidden: hidden, classes: classes,
		w1: widen(w1), b1: widen(b1), b2: widen(b2),
		w2t: make([]float64, hidden*classes),
	}
	for k := range classes {
		for j := range hidden {
			h.w2t[j*classes+k] = float64(w2[k*hidden+j])
		}
	}
	return h, nil
}

// InputDim is the feature length the head takes.
func (h *Head) InputDim() int { return h.in }

// Hidden is the width of the hidden layer.
func (h *Head) Hidden() int { return h.hidden }

// Classes is the number of outputs.
func (h *Head) Classes() int { return h.classes }

// Probabilities writes the softmax class probabilities for one feature
// vector into out. len(features) must be InputDim and len(out) Classes; a
// mismatch is a programming error and panics, as copy-style kernels do. It
// does not allocate for inputs up to 2048 wide. Non-finite features give NaN probabilities.
func (h *Head) Probabilities(features []float32, out []float64) {
	if len(features) != h.in || len(out) != h.classes {
		panic(fmt.Sprintf("inference: Head.Probabilities: got %d features and %d outputs, want %d and %d", len(features), len(out), h.in, h.classes))
	}
	// out accumulates the logits: each hidden unit is computed once and
	// immediately added into every class, so no scratch buffer is needed and
	// the head stays safe for concurrent use.
	copy(out, h.b2)
	// Widening the features once, into a stack buffer, keeps the int->float
	// conversion out of the inner loop (a third of its cost) without a heap
	// allocation or shared scratch space.
	var buf [stackFeatures]float64
	var x []float64
	if h.in <= stackFeatures {
		x = buf[:h.in]
	} else {
		x = make([]float64, h.in) // only for unusually wide backbones
	}
	for i, v := range features[:h.in] {
		x[i] = float64(v)
	}
	for j := range h.hidden {
		a := h.b1[j] + dot(h.w1[j*h.in:(j+1)*h.in], x)
		if a <= 0 { // ReLU; a NaN is not <= 0 and propagates to the output
			continue
		}
		w2 := h.w2t[j*h.classes : (j+1)*h.classes]
		for k := range out {
			out[k] += w2[k] * a
		}
	}
	softmaxInPlace(out)
}

// dot is the inner product of equally long w and x. Four partial sums break
// the dependency chain of the adds; the order of float64 additions moves the
// result by ~1e-16, far below float32 resolution. The loop shape (len >= 4,
// then reslice) lets the compiler drop the bounds checks.
func dot(w, x []float64) float64 {
	var s0, s1, s2, s3 float64
	for len(w) >= 4 && len(x) >= 4 {
		s0 += w[0] * x[0]
		s1 += w[1] * x[1]
		s2 += w[2] * x[2]
		s3 += w[3] * x[3]
		w, x = w[4:], x[4:]
	}
	for i := range min(len(w), len(x)) {
		s0 += w[i] * x[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// ProbabilitiesBatch applies Probabilities to n = len(features)/InputDim
// feature vectors stored row after row; out holds n*Classes values.
func (h *Head) ProbabilitiesBatch(features []float32, out []float64) {
	if len(features)%h.in != 0 || len(out) != len(features)/h.in*h.classes {
		panic(fmt.Sprintf("inference: Head.ProbabilitiesBatch: got %d features and %d outputs for in=%d classes=%d", len(features), len(out), h.in, h.classes))
	}
	n := len(features) / h.in
	for i := range n {
		h.Probabilities(features[i*h.in:(i+1)*h.in], out[i*h.classes:(i+1)*h.classes])
	}
}

// softmaxInPlace turns logits into probabilities; subtracting the maximum
// keeps exp from overflowing for large logits.
func softmaxInPlace(v []float64) {
	m := math.Inf(-1)
	for _, x := range v {
		if x > m {
			m = x
		}
	}
	if math.IsInf(m, 0) || math.IsNaN(m) {
		for i := range v {
			v[i] = math.NaN()
		}
		return
	}
	var sum float64
	for i, x := range v {
		e := math.Exp(x - m)
		v[i] = e
		sum += e
	}
	for i := range v {
		v[i] /= sum
	}
}

func widen(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}
