package inference

import (
	"context"
	"errors"
	"fmt"
	"image"
	"math"
	"runtime"
	"sync"

	"gocv.io/x/gocv"
)

// ClassifierOptions tune a Classifier. The zero value is usable.
type ClassifierOptions struct {
	// Batch is the number of images per inference run (default 32).
	Batch int
	// Workers is the number of goroutines reading, decoding and
	// preprocessing images while batches run (default: CPU count).
	Workers int
	// NoFeatures leaves Result.Features nil, saving a copy per image when
	// the caller only needs the probability.
	NoFeatures bool
	// NoFocus leaves Result.Focus 0, saving Preprocessor.Focus (roughly
	// half the cost of preprocessing) when the caller does not monitor
	// image quality.
	NoFocus bool
	// NoAppearance leaves Result.Appearance zero, saving a pass over the
	// input (and Focus) when nothing judges plausibility, such as the
	// bare-pipeline benchmark.
	NoAppearance bool
	Engine       EngineOptions
	Decode       DecodeOptions
}

// Input is one image to classify: a decoded 8-bit BGR Mat (not closed by
// the classifier), encoded bytes, or a file path, in that order of
// precedence. Path is also echoed in the Result.
type Input struct {
	Path string
	Data []byte
	Mat  *gocv.Mat
}

// Result is the outcome for one input.
type Result struct {
	// Index is the input's position.
	Index int
	Path  string
	// PParasitized is p(parasitized) from the head's softmax.
	PParasitized float64
	// Label is "parasitized" when PParasitized >= the manifest threshold,
	// else the most probable other class.
	Label string
	// Features is the backbone's feature vector (nil with NoFeatures).
	Features []float32
	// Focus is the crop's sharpness (Preprocessor.Focus, on the model's
	// input), which defocus lowers even when the classifier copes with it;
	// 0 with NoFocus.
	Focus float64
	// Width and Height are the decoded image's size, before the resize.
	Width, Height int
	// Appearance is the crop's colour and texture statistics at the
	// model's input size, for the plausibility gate; zero with
	// NoAppearance.
	Appearance Appearance
	// Err is set when this image could not be classified (the other
	// fields are then zero); other images are unaffected.
	Err error
}

// Classifier runs the whole pipeline on images: decode, preprocess,
// batched inference, head. Reading, decoding and preprocessing happen on
// worker goroutines while earlier batches are in ONNX Runtime, so the
// pipeline's throughput approaches that of the bare model. It is safe for
// concurrent use.
type Classifier struct {
	bundle     *Bundle
	engine     *Engine
	pre        *Preprocessor
	dec        *Decoder
	head       *Head
	posIndex   int
	threshold  float64
	classes    []string
	batch      int
	workers    int
	features   bool
	focus      bool
	appearance bool

	mu     sync.RWMutex
	closed bool

	poolMu sync.Mutex
	pool   map[int][]*pipeBatch // idle batches by capacity
}

// NewClassifier builds the pipeline for a verified bundle: it loads the
// backbone into ONNX Runtime (checking names and shapes and running a smoke
// inference). The bundle must stay open while the classifier is used.
func NewClassifier(b *Bundle, opts ClassifierOptions) (*Classifier, error) {
	m := b.Manifest
	if opts.Engine.Model == nil {
		// The session is built from the bytes ReadFile hashed, not from
		// the path: the file cannot change between verification and load.
		opts.Engine.Model = func() ([]byte, error) { return b.ReadFile(BackboneFile) }
	}
	eng, err := NewEngine(b.BackbonePath, m.Input, m.Outputs, len(m.Classes), opts.Engine)
	if err != nil {
		return nil, err
	}
	if b.Head == nil && !eng.HasProbabilities() {
		eng.Close()
		return nil, fmt.Errorf("%w: %s: manifest has neither a head nor an outputs.probabilities output", ErrModelMismatch, ManifestFile)
	}
	if b.Head != nil && b.Head.InputDim() != eng.FeaturesDim() {
		eng.Close()
		return nil, fmt.Errorf("%w: head takes %d features, backbone gives %d", ErrModelMismatch, b.Head.InputDim(), eng.FeaturesDim())
	}
	pre, err := NewPreprocessor(m.Input)
	if err != nil {
		eng.Close()
		return nil, fmt.Errorf("%w: %s: %v", ErrModelMismatch, ManifestFile, err)
	}
	c := &Classifier{
		bundle: b, engine: eng, pre: pre, dec: NewDecoder(opts.Decode), head: b.Head,
		posIndex: b.PositiveIndex, threshold: m.Threshold, classes: m.Classes,
		batch: opts.Batch, workers: opts.Workers, features: !opts.NoFeatures, focus: !opts.NoFocus, appearance: !opts.NoAppearance,
	}
	if c.batch <= 0 {
		c.batch = 32
	}
	if c.workers <= 0 {
		c.workers = runtime.NumCPU()
	}
	return c, nil
}

// Version is the model version of the bundle.
func (c *Classifier) Version() string { return c.bundle.Manifest.Version }

// Threshold is the decision threshold on p(parasitized).
func (c *Classifier) Threshold() float64 { return c.threshold }

// Engine exposes the underlying engine (for benchmarks of the bare model).
func (c *Classifier) Engine() *Engine { return c.engine }

// Preprocessor exposes the preprocessing of this model.
func (c *Classifier) Preprocessor() *Preprocessor { return c.pre }

// Decoder exposes the decoder and its limits.
func (c *Classifier) Decoder() *Decoder { return c.dec }

// BatchSize is the number of images per inference run.
func (c *Classifier) BatchSize() int { return c.batch }

// Classify classifies inputs and returns one Result per input, in input
// order. Per-image failures are in Result.Err; the error return is only for
// cancellation or a closed classifier.
func (c *Classifier) Classify(ctx context.Context, inputs []Input) ([]Result, error) {
	out := make([]Result, len(inputs))
	err := c.Stream(ctx, len(inputs), func(i int) Input { return inputs[i] }, func(r Result) { out[r.Index] = r })
	return out, err
}

// Stream classifies n inputs, obtained with input(i) from the worker
// goroutines, and calls emit once per input as results become available
// (not in input order; emit calls are serialised). It returns when every
// input has been emitted, or early with ctx's error after cancellation (the
// inputs not yet emitted are then dropped).
func (c *Classifier) Stream(ctx context.Context, n int, input func(i int) Input, emit func(Result)) error {
	return c.StreamBatch(ctx, c.batch, n, input, emit)
}

// StreamBatch is Stream with another batch size than the classifier's.
func (c *Classifier) StreamBatch(ctx context.Context, batch, n int, input func(i int) Input, emit func(Result)) error {
	if batch < 1 {
		return fmt.Errorf("batch size must be positive, got %d", batch)
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return ErrClosed
	}
	if n == 0 {
		return nil
	}
	batch = min(batch, n)
	nbuf := c.engine.Sessions() + 2
	p := &pipeline{c: c, emit: emit, size: batch, free: make(chan *pipeBatch, nbuf), ready: make(chan *pipeBatch, nbuf)}
	for range nbuf {
		pb, err := c.getBatch(batch)
		if err != nil {
			p.release()
			return err
		}
		pb.p = p
		p.all = append(p.all, pb)
		p.free <- pb
	}
	defer p.release()

	jobs := make(chan int)
	go func() {
		defer close(jobs)
		for i := range n {
			select {
			case jobs <- i:
			case <-ctx.Done():
				return
			}
		}
	}()

	var infer sync.WaitGroup
	for range c.engine.Sessions() {
		infer.Add(1)
		go func() {
			defer infer.Done()
			p.inferLoop()
		}()
	}
	var work sync.WaitGroup
	for range min(c.workers, n) {
		work.Add(1)
		go func() {
			defer work.Done()
			p.workLoop(ctx, jobs, input)
		}()
	}
	work.Wait()
	p.mu.Lock()
	if p.cur != nil {
		p.cur.seal()
		p.cur = nil
	}
	p.mu.Unlock()
	close(p.ready)
	infer.Wait()
	return ctx.Err()
}

// pipeline is one Stream call's state: worker goroutines fill batch slots,
// inference goroutines run full batches and emit results, and batches
// cycle between the free and ready channels.
type pipeline struct {
	c     *Classifier
	size  int
	free  chan *pipeBatch
	ready chan *pipeBatch
	all   []*pipeBatch

	mu  sync.Mutex // guards cur
	cur *pipeBatch // the batch whose slots are being handed out

	emitMu sync.Mutex
	emit   func(Result)
}

type pipeBatch struct {
	p     *pipeline
	b     *Batch
	idx   []int
	path  []string
	focus []float64
	look  []Appearance
	size  []image.Point

	mu       sync.Mutex
	reserved int
	pending  int // slots reserved but not yet filled
	sealed   bool
}

// release returns the pipeline's batches to the classifier for reuse.
func (p *pipeline) release() {
	for _, b := range p.all {
		p.c.putBatch(b)
	}
	p.all = nil
}

// maxIdleBatches bounds the batch buffers kept between calls per size
// (each holds Cap() preprocessed images and its ONNX tensors).
const maxIdleBatches = 8

// getBatch takes an idle batch of the given size or makes one: buffers
// and tensors are reused across calls, so that classifying one image at a
// time (the daemon) or pass after pass (bench) allocates nothing.
func (c *Classifier) getBatch(size int) (*pipeBatch, error) {
	c.poolMu.Lock()
	if l := c.pool[size]; len(l) > 0 {
		pb := l[len(l)-1]
		c.pool[size] = l[:len(l)-1]
		c.poolMu.Unlock()
		return pb, nil
	}
	c.poolMu.Unlock()
	eb, err := c.engine.NewBatch(size)
	if err != nil {
		return nil, err
	}
	return &pipeBatch{b: eb, idx: make([]int, size), path: make([]string, size), focus: make([]float64, size), look: make([]Appearance, size), size: make([]image.Point, size)}, nil
}

func (c *Classifier) putBatch(pb *pipeBatch) {
	pb.p = nil
	clear(pb.path)
	c.poolMu.Lock()
	defer c.poolMu.Unlock()
	if c.pool == nil {
		c.pool = map[int][]*pipeBatch{}
	}
	size := pb.b.Cap()
	if len(c.pool[size]) >= maxIdleBatches {
		pb.b.Close()
		return
	}
	c.pool[size] = append(c.pool[size], pb)
}

func (p *pipeline) send(r Result) {
	p.emitMu.Lock()
	defer p.emitMu.Unlock()
	p.emit(r)
}

// reserve hands out the next free slot, taking a fresh batch when the
// current one is full. Slots are reserved only after an image decoded, so a
// bad image never leaves a hole in a batch.
func (p *pipeline) reserve(i int, path string) (*pipeBatch, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur == nil {
		p.cur = <-p.free
		p.cur.reserved, p.cur.pending, p.cur.sealed = 0, 0, false
	}
	b := p.cur
	b.mu.Lock()
	slot := b.reserved
	b.reserved++
	b.pending++
	b.idx[slot], b.path[slot] = i, path
	full := b.reserved == p.size
	b.mu.Unlock()
	if full {
		b.seal()
		p.cur = nil
	}
	return b, slot
}

// seal marks the batch as taking no more images; it goes to inference once
// its last reserved slot is filled.
func (b *pipeBatch) seal() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sealed = true
	if b.pending == 0 {
		b.p.ready <- b
	}
}

func (b *pipeBatch) filled() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pending--
	if b.sealed && b.pending == 0 {
		b.p.ready <- b
	}
}

func (p *pipeline) workLoop(ctx context.Context, jobs <-chan int, input func(int) Input) {
	var buf []byte
	for i := range jobs {
		if ctx.Err() != nil {
			return
		}
		in := input(i)
		var err error
		buf, err = p.prepare(i, in, buf)
		if err != nil {
			p.send(Result{Index: i, Path: in.Path, Err: err})
		}
	}
}

// prepare decodes input i and preprocesses it into a batch slot. It returns
// the (possibly grown) read buffer for reuse.
func (p *pipeline) prepare(i int, in Input, buf []byte) ([]byte, error) {
	if in.Mat != nil {
		if in.Mat.Empty() || in.Mat.Type() != gocv.MatTypeCV8UC3 {
			return buf, imgErr(ErrUnsupported, "Mat must be non-empty 8-bit BGR, got type %d", int(in.Mat.Type()))
		}
		return buf, p.fill(i, in.Path, *in.Mat)
	}
	data := in.Data
	if data == nil {
		if in.Path == "" {
			return buf, errors.New("input has no path, data or image")
		}
		var err error
		buf, err = p.c.dec.ReadFile(in.Path, buf)
		if err != nil {
			return buf, err
		}
		data = buf
	}
	m, err := p.c.dec.Decode(data)
	if err != nil {
		return buf, err
	}
	defer m.Close()
	return buf, p.fill(i, in.Path, m)
}

func (p *pipeline) fill(i int, path string, m gocv.Mat) error {
	b, slot := p.reserve(i, path)
	b.size[slot] = image.Pt(m.Cols(), m.Rows())
	err := p.c.pre.Mat(b.b.Input(slot), m)
	if err != nil {
		// The slot is already part of the batch; mark it so the inference
		// loop reports this error instead of a result for garbage input.
		b.idx[slot] = -1 - i
	} else {
		b.focus[slot], b.look[slot] = 0, Appearance{}
		switch {
		case p.c.appearance:
			// Appearance measures the focus too: one pass, not two.
			b.look[slot] = p.c.pre.Appearance(b.b.Input(slot))
			if p.c.focus {
				b.focus[slot] = b.look[slot].Focus
			}
		case p.c.focus:
			b.focus[slot] = p.c.pre.Focus(b.b.Input(slot))
		}
	}
	b.filled()
	if err != nil {
		return fmt.Errorf("preprocess: %w", err)
	}
	return nil
}

func (p *pipeline) inferLoop() {
	c := p.c
	probs := make([]float64, len(c.classes))
	for b := range p.ready {
		n := b.reserved
		err := c.engine.Run(b.b, n)
		for s := range n {
			i := b.idx[s]
			if i < 0 {
				continue // preprocessing failed; reported by the worker
			}
			r := Result{Index: i, Path: b.path[s]}
			if err != nil {
				r.Err = err
				p.send(r)
				continue
			}
			feat := b.b.Features(s)
			if c.head != nil {
				c.head.Probabilities(feat, probs)
			} else {
				for k, v := range b.b.Probabilities(s) {
					probs[k] = float64(v)
				}
			}
			if pp := probs[c.posIndex]; math.IsNaN(pp) || math.IsInf(pp, 0) {
				r.Err = errors.New("model output is not finite for this image")
				p.send(r)
				continue
			}
			r.PParasitized = probs[c.posIndex]
			r.Label = c.label(probs)
			r.Focus = b.focus[s]
			r.Appearance = b.look[s]
			r.Width, r.Height = b.size[s].X, b.size[s].Y
			if c.features {
				r.Features = append([]float32(nil), feat...)
			}
			p.send(r)
		}
		p.free <- b
	}
}

// label applies the manifest threshold to p(parasitized); below it, the most
// probable of the other classes wins.
func (c *Classifier) label(probs []float64) string {
	if probs[c.posIndex] >= c.threshold {
		return c.classes[c.posIndex]
	}
	best := -1
	for k, v := range probs {
		if k != c.posIndex && (best < 0 || v > probs[best]) {
			best = k
		}
	}
	return c.classes[best]
}

// Close releases the ONNX Runtime sessions after running calls return.
func (c *Classifier) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	c.poolMu.Lock()
	for _, l := range c.pool {
		for _, pb := range l {
			pb.b.Close()
		}
	}
	c.pool = nil
	c.poolMu.Unlock()
	return c.engine.Close()
}
