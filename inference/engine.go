package inference

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	ort "github.com/yalue/onnxruntime_go"
)

// ErrModelMismatch is returned when an ONNX model does not have the inputs
// or outputs its manifest promises.
var ErrModelMismatch = errors.New("model does not match manifest")

// ErrClosed is returned by an Engine or Classifier used after Close.
var ErrClosed = errors.New("closed")

// GraphOptimization selects ONNX Runtime's graph optimisation level.
type GraphOptimization int

// Graph optimisation levels, from none to all (the default).
const (
	OptimizeAll GraphOptimization = iota
	OptimizeExtended
	OptimizeBasic
	OptimizeNone
)

func (g GraphOptimization) ort() ort.GraphOptimizationLevel {
	switch g {
	case OptimizeExtended:
		return ort.GraphOptimizationLevelEnableExtended
	case OptimizeBasic:
		return ort.GraphOptimizationLevelEnableBasic
	case OptimizeNone:
		return ort.GraphOptimizationLevelDisableAll
	default:
		return ort.GraphOptimizationLevelEnableAll
	}
}

// EngineOptions tune the ONNX Runtime sessions. The zero value is usable.
type EngineOptions struct {
	// Sessions is how many batches may run at the same time, each on its own
	// session (default 1). ONNX Runtime sessions are safe to share, but the
	// tensors bound to a run are not, and one session per concurrent run
	// keeps each run's thread pool from competing with another's.
	Sessions int
	// IntraOpThreads is the number of threads one operator may use; 0 means
	// the CPU count divided by Sessions (at least 1).
	IntraOpThreads int
	// InterOpThreads is the number of operators run in parallel; 0 means 1,
	// which is right for a sequential CNN.
	InterOpThreads int
	// Optimization is the graph optimisation level (default all).
	Optimization GraphOptimization
	// Spin lets ONNX Runtime's worker threads busy-wait between operators.
	// It lowers latency on an idle machine but burns CPU that decoding and
	// preprocessing need when they overlap with inference, so it is off by
	// default.
	Spin bool
	// NoArena turns off ONNX Runtime's CPU memory arena, which serves
	// tensors from blocks it never returns, so the process keeps its peak.
	// Without it tensors come from malloc: worth it only where glibc is
	// told to return memory (the daemon's unit sets MALLOC_ARENA_MAX and
	// MALLOC_MMAP_THRESHOLD_); elsewhere malloc's per-thread arenas hold
	// even more.
	NoArena bool
	// ORTLib is an explicit path to libonnxruntime (see FindORTLib).
	ORTLib string
	// Model, when set, returns the ONNX model's bytes and the sessions are
	// built from them rather than by ONNX Runtime opening the path (which
	// then only names the model in messages). With a bundle's ReadFile,
	// which hashes the bytes it returns, the bytes verified are the bytes
	// loaded: a file replaced after OpenBundle cannot slip in. The bytes
	// are dropped once the sessions exist.
	Model func() ([]byte, error)
}

// Engine runs a backbone ONNX model on batches of preprocessed images. It is
// safe for concurrent use: each Run borrows one of the engine's sessions.
type Engine struct {
	path       string
	in         InputSpec
	featName   string
	featDim    int
	probName   string
	probDim    int
	perImage   int // float32 values per preprocessed image
	inputShape func(n int) ort.Shape
	sessions   chan *ort.DynamicAdvancedSession
	all        []*ort.DynamicAdvancedSession
	intraOp    int
	closeOnce  sync.Once
	mu         sync.RWMutex
	closed     bool
}

// NewEngine loads the ONNX model at path, checks its input and output names
// and shapes against the manifest's input and outputs, creates the sessions
// and runs one smoke inference. nClasses is used to check a probabilities
// output when the manifest names one.
func NewEngine(path string, in InputSpec, out OutputSpec, nClasses int, opts EngineOptions) (*Engine, error) {
	if _, err := InitORT(opts.ORTLib); err != nil {
		return nil, err
	}
	file := filepath.Base(path)
	if in.Width <= 0 || in.Height <= 0 {
		return nil, fmt.Errorf("%w: manifest input.width/height must be positive, got %dx%d", ErrModelMismatch, in.Width, in.Height)
	}
	if in.Layout != "NCHW" && in.Layout != "NHWC" {
		return nil, fmt.Errorf("%w: manifest input.layout must be NCHW or NHWC, got %q", ErrModelMismatch, in.Layout)
	}
	var data []byte
	if opts.Model != nil {
		var err error
		if data, err = opts.Model(); err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		if len(data) == 0 {
			return nil, fmt.Errorf("read %s: %w: no model bytes", path, ErrModelMismatch)
		}
	}
	var (
		inputs, outputs []ort.InputOutputInfo
		err             error
	)
	if data != nil {
		inputs, outputs, err = ort.GetInputOutputInfoWithONNXData(data)
	} else {
		inputs, outputs, err = ort.GetInputOutputInfo(path)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	e := &Engine{path: path, in: in, featName: out.Features, featDim: out.FeaturesDim, perImage: 3 * in.Width * in.Height}
	h, w := int64(in.Height), int64(in.Width)
	var want ort.Shape
	if in.Layout == "NCHW" {
		want = ort.NewShape(-1, 3, h, w)
		e.inputShape = func(n int) ort.Shape { return ort.NewShape(int64(n), 3, h, w) }
	} else {
		want = ort.NewShape(-1, h, w, 3)
		e.inputShape = func(n int) ort.Shape { return ort.NewShape(int64(n), h, w, 3) }
	}
	if err := checkIO(file, "input.name", in.Name, inputs, want); err != nil {
		return nil, err
	}
	if len(inputs) != 1 {
		return nil, fmt.Errorf("%w: %s has %d inputs (%s), want exactly 1", ErrModelMismatch, file, len(inputs), ioNames(inputs))
	}
	if out.FeaturesDim <= 0 {
		return nil, fmt.Errorf("%w: manifest outputs.features_dim must be positive, got %d", ErrModelMismatch, out.FeaturesDim)
	}
	if err := checkIO(file, "outputs.features", out.Features, outputs, ort.NewShape(-1, int64(out.FeaturesDim))); err != nil {
		return nil, err
	}
	names := []string{out.Features}
	if out.Probabilities != nil {
		e.probName, e.probDim = *out.Probabilities, nClasses
		if err := checkIO(file, "outputs.probabilities", e.probName, outputs, ort.NewShape(-1, int64(nClasses))); err != nil {
			return nil, err
		}
		names = append(names, e.probName)
	}

	n := max(opts.Sessions, 1)
	intra := opts.IntraOpThreads
	if intra <= 0 {
		intra = max(runtime.NumCPU()/n, 1)
	}
	inter := max(opts.InterOpThreads, 1)
	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("session options: %w", err)
	}
	defer so.Destroy()
	if err := so.SetIntraOpNumThreads(intra); err != nil {
		return nil, fmt.Errorf("set intra-op threads: %w", err)
	}
	if err := so.SetInterOpNumThreads(inter); err != nil {
		return nil, fmt.Errorf("set inter-op threads: %w", err)
	}
	if err := so.SetGraphOptimizationLevel(opts.Optimization.ort()); err != nil {
		return nil, fmt.Errorf("set graph optimisation: %w", err)
	}
	if err := so.SetCpuMemArena(!opts.NoArena); err != nil {
		return nil, fmt.Errorf("set CPU memory arena: %w", err)
	}
	spin := "0"
	if opts.Spin {
		spin = "1"
	}
	if err := so.AddSessionConfigEntry("session.intra_op.allow_spinning", spin); err != nil {
		return nil, fmt.Errorf("set spinning: %w", err)
	}
	if err := so.AddSessionConfigEntry("session.inter_op.allow_spinning", spin); err != nil {
		return nil, fmt.Errorf("set spinning: %w", err)
	}
	e.intraOp = intra
	e.sessions = make(chan *ort.DynamicAdvancedSession, n)
	for range n {
		var s *ort.DynamicAdvancedSession
		if data != nil {
			s, err = ort.NewDynamicAdvancedSessionWithONNXData(data, []string{in.Name}, names, so)
		} else {
			s, err = ort.NewDynamicAdvancedSession(path, []string{in.Name}, names, so)
		}
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("load %s: %w", path, err)
		}
		e.all = append(e.all, s)
		e.sessions <- s
	}
	if err := e.smoke(); err != nil {
		e.Close()
		return nil, fmt.Errorf("%s: smoke inference: %w", file, err)
	}
	return e, nil
}

// checkIO finds name among infos and compares its shape with want, where -1
// in want means "any" (the dynamic batch dimension).
func checkIO(file, field, name string, infos []ort.InputOutputInfo, want ort.Shape) error {
	for _, info := range infos {
		if info.Name != name {
			continue
		}
		if info.OrtValueType != ort.ONNXTypeTensor || info.DataType != ort.TensorElementDataTypeFloat {
			return fmt.Errorf("%w: %s: %q (manifest %s) is %s, want a float32 tensor", ErrModelMismatch, file, name, field, info.String())
		}
		got := info.Dimensions
		ok := len(got) == len(want)
		for i := 0; ok && i < len(want); i++ {
			// A dynamic dimension in the model is stored as -1 (or 0 in some
			// exporters); only the batch dimension may be dynamic.
			switch {
			case want[i] == -1 && got[i] > 0:
				// A fixed batch size would make batching fail at run time.
				ok = false
			case want[i] == -1:
			case got[i] != want[i]:
				ok = false
			}
		}
		if !ok {
			return fmt.Errorf("%w: %s: %q (manifest %s) has shape %v, want %v (-1 = dynamic batch)", ErrModelMismatch, file, name, field, got, want)
		}
		return nil
	}
	return fmt.Errorf("%w: %s has no tensor %q (manifest %s); it has %s", ErrModelMismatch, file, name, field, ioNames(infos))
}

func ioNames(infos []ort.InputOutputInfo) string {
	s := make([]string, len(infos))
	for i, info := range infos {
		s[i] = fmt.Sprintf("%q %v", info.Name, info.Dimensions)
	}
	return strings.Join(s, ", ")
}

// smoke runs a batch of two all-zero images and checks that the outputs are
// finite: a model that loads but produces NaN must not be put in service.
func (e *Engine) smoke() error {
	b, err := e.NewBatch(2)
	if err != nil {
		return err
	}
	defer b.Close()
	if err := e.Run(b, 2); err != nil {
		return err
	}
	for _, v := range b.features[:2*e.featDim] {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("output %q is not finite", e.featName)
		}
	}
	return nil
}

// InputSize is the number of float32 values of one preprocessed image.
func (e *Engine) InputSize() int { return e.perImage }

// FeaturesDim is the length of one image's feature vector.
func (e *Engine) FeaturesDim() int { return e.featDim }

// Sessions is the number of batches that can run at the same time.
func (e *Engine) Sessions() int { return cap(e.sessions) }

// IntraOpThreads is the number of intra-op threads of each session.
func (e *Engine) IntraOpThreads() int { return e.intraOp }

// HasProbabilities reports whether the model itself outputs class
// probabilities (manifest outputs.probabilities set).
func (e *Engine) HasProbabilities() bool { return e.probName != "" }

// Batch holds the input and output buffers of up to Cap images. The ONNX
// tensors are views on these buffers, created once per batch size used, so
// a batch reused across runs allocates nothing. A Batch must not be used by
// two goroutines at once; use one per goroutine.
type Batch struct {
	capacity int
	perImage int
	featDim  int
	probDim  int
	input    []float32
	features []float32
	probs    []float32
	views    map[int]*batchView
}

type batchView struct {
	in      *ort.Tensor[float32]
	outputs []ort.Value
}

// NewBatch allocates buffers for up to capacity images.
func (e *Engine) NewBatch(capacity int) (*Batch, error) {
	if capacity <= 0 {
		return nil, fmt.Errorf("batch capacity must be positive, got %d", capacity)
	}
	b := &Batch{
		capacity: capacity,
		perImage: e.perImage,
		featDim:  e.featDim,
		probDim:  e.probDim,
		input:    make([]float32, capacity*e.perImage),
		features: make([]float32, capacity*e.featDim),
		views:    map[int]*batchView{},
	}
	if e.probName != "" {
		b.probs = make([]float32, capacity*e.probDim)
	}
	return b, nil
}

// Cap is the largest number of images the batch holds.
func (b *Batch) Cap() int { return b.capacity }

// Input is the preprocessed-image slot i, to be filled before Run.
func (b *Batch) Input(i int) []float32 {
	return b.input[i*b.perImage : (i+1)*b.perImage : (i+1)*b.perImage]
}

// Features is image i's feature vector after Run.
func (b *Batch) Features(i int) []float32 {
	return b.features[i*b.featDim : (i+1)*b.featDim : (i+1)*b.featDim]
}

// Probabilities is image i's class probabilities after Run, or nil when the
// model has no probabilities output.
func (b *Batch) Probabilities(i int) []float32 {
	if b.probs == nil {
		return nil
	}
	return b.probs[i*b.probDim : (i+1)*b.probDim : (i+1)*b.probDim]
}

func (b *Batch) view(e *Engine, n int) (*batchView, error) {
	if v, ok := b.views[n]; ok {
		return v, nil
	}
	in, err := ort.NewTensor(e.inputShape(n), b.input[:n*b.perImage])
	if err != nil {
		return nil, fmt.Errorf("input tensor: %w", err)
	}
	feat, err := ort.NewTensor(ort.NewShape(int64(n), int64(b.featDim)), b.features[:n*b.featDim])
	if err != nil {
		in.Destroy()
		return nil, fmt.Errorf("features tensor: %w", err)
	}
	v := &batchView{in: in, outputs: []ort.Value{feat}}
	if b.probs != nil {
		p, err := ort.NewTensor(ort.NewShape(int64(n), int64(b.probDim)), b.probs[:n*b.probDim])
		if err != nil {
			in.Destroy()
			feat.Destroy()
			return nil, fmt.Errorf("probabilities tensor: %w", err)
		}
		v.outputs = append(v.outputs, p)
	}
	b.views[n] = v
	return v, nil
}

// Close releases the batch's ONNX tensors.
func (b *Batch) Close() {
	for n, v := range b.views {
		v.in.Destroy()
		for _, o := range v.outputs {
			o.Destroy()
		}
		delete(b.views, n)
	}
}

// Run infers the first n images of b (n <= b.Cap()) on one of the engine's
// sessions, waiting for a free one.
func (e *Engine) Run(b *Batch, n int) error {
	if n <= 0 || n > b.capacity {
		return fmt.Errorf("run %d images on a batch of %d", n, b.capacity)
	}
	if b.perImage != e.perImage || b.featDim != e.featDim {
		return errors.New("batch belongs to another engine")
	}
	v, err := b.view(e, n)
	if err != nil {
		return err
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return ErrClosed
	}
	s := <-e.sessions
	err = s.Run([]ort.Value{v.in}, v.outputs)
	e.sessions <- s
	if err != nil {
		return fmt.Errorf("run %s on %d images: %w", filepath.Base(e.path), n, err)
	}
	return nil
}

// Close destroys the sessions after in-flight runs have finished.
func (e *Engine) Close() error {
	e.closeOnce.Do(func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.closed = true
		for _, s := range e.all {
			s.Destroy()
		}
		e.all = nil
	})
	return nil
}
