package tuning

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// The built-in head trainer (objective builtin: head) trains the seed
// article's classifier head on cached backbone features (Features):
// Dense(dim→hidden) ReLU, dropout, Dense(hidden→classes) softmax, with
// cross-entropy loss. Its weights use inference.Head's PyTorch layout
// (dense1 is fc1: [hidden][dim], dense2 is fc2: [classes][hidden]) so that a
// trained head can be exported as head.safetensors without transposing.

// Head parameter names, as a study's parameters name them.
const (
	HeadOptimizer = "optimizer"  // adam | sgd | rmsprop
	HeadLR        = "lr"         // initial learning rate
	HeadL2        = "l2"         // weight decay on both weight matrices
	HeadDropout   = "dropout"    // drop probability of the hidden units
	HeadHidden    = "hidden"     // width of the hidden layer
	HeadSchedule  = "schedule"   // plateau | cosine | none
	HeadPatience  = "patience"   // early stopping; 0 disables it
	HeadBatchSize = "batch_size" // fixed per dataset; probed when absent
	HeadMomentum  = "momentum"   // SGD only
)

// headMetrics are the per-epoch keys a study may name as its metric.
var headMetrics = []string{"val_loss", "val_acc", "train_loss", "train_acc"}

// Fixed choices of the trainer, from the seed article (Keras defaults where
// it uses Keras).
const (
	plateauFactor   = 0.3  // ReduceLROnPlateau(factor=0.3, ...)
	plateauPatience = 2    // ... patience=2)
	plateauMinDelta = 1e-4 // Keras' default min_delta
	adamBeta1       = 0.9
	adamBeta2       = 0.999
	rmspropRho      = 0.9
	optimizerEps    = 1e-7 // Keras' epsilon for Adam and RMSprop
	histogramBins   = 30
	probeReps       = 3 // timed repeats per batch-size candidate
	// headValFraction and headSplitSeed fix the validation split: every
	// trial of a study must be judged on the same rows, or trials differ
	// by their split as much as by their parameters.
	headValFraction = 0.2
	headSplitSeed   = 0x68656164 // "head"
)

// ErrHeadParams is wrapped by every error about a trial's head parameters.
var ErrHeadParams = errors.New("head parameters")

// HeadConfig is the head trainer's parameters after defaults.
type HeadConfig struct {
	Optimizer string  // adam (default), sgd, rmsprop
	LR        float64 // default 0.003, the seed article's start
	L2        float64 // default 0
	Dropout   float64 // default 0.2
	Hidden    int     // default 100, the seed article's head; at most 4096
	Schedule  string  // plateau (default), cosine, none
	Patience  int     // default 3; 0 disables early stopping
	BatchSize int     // 0: not given, probed once per dataset
	Momentum  float64 // default 0.9; only sgd uses it
}

// DefaultHeadConfig is the head trainer's configuration when a study sets
// none of its parameters.
func DefaultHeadConfig() HeadConfig {
	return HeadConfig{Optimizer: "adam", LR: 0.003, Dropout: 0.2, Hidden: 100, Schedule: "plateau", Patience: 3, Momentum: 0.9}
}

// ParseHeadParams reads the head trainer's parameters from a trial's
// params: every key is optional, an unknown one is refused (a misspelt
// "learning_rate" would otherwise be tuned without effect), and the error
// names the parameter and what it accepts. Errors wrap ErrHeadParams.
func ParseHeadParams(ps Params) (HeadConfig, error) {
	c := DefaultHeadConfig()
	var unknown []string
	for k := range ps {
		switch k {
		case HeadOptimizer, HeadLR, HeadL2, HeadDropout, HeadHidden, HeadSchedule, HeadPatience, HeadBatchSize, HeadMomentum:
		default:
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return c, fmt.Errorf("%w: unknown %q; the head takes %s", ErrHeadParams, unknown,
			strings.Join([]string{HeadOptimizer, HeadLR, HeadL2, HeadDropout, HeadHidden, HeadSchedule, HeadPatience, HeadBatchSize, HeadMomentum}, ", "))
	}
	bad := func(name string, v any, accepted string) error {
		return fmt.Errorf("%w: %s: %v: accepted %s", ErrHeadParams, name, v, accepted)
	}
	str := func(name string, dst *string, accepted ...string) error {
		v, ok := ps[name]
		if !ok {
			return nil
		}
		s, isStr := v.(string)
		if !isStr || !slices.Contains(accepted, s) {
			return bad(name, v, strings.Join(accepted, ", "))
		}
		*dst = s
		return nil
	}
	num := func(name string, dst *float64, ok func(float64) bool, accepted string) error {
		v, present := ps[name]
		if !present {
			return nil
		}
		x, isNum := number(v)
		if !isNum || math.IsNaN(x) || math.IsInf(x, 0) || !ok(x) {
			return bad(name, v, accepted)
		}
		*dst = x
		return nil
	}
	whole := func(name string, dst *int, lo, hi int) error {
		v, present := ps[name]
		if !present {
			return nil
		}
		x, isNum := number(v)
		if !isNum || x != math.Trunc(x) || x < float64(lo) || x > float64(hi) {
			return bad(name, v, fmt.Sprintf("a whole number in %d..%d", lo, hi))
		}
		*dst = int(x)
		return nil
	}
	return c, errors.Join(
		str(HeadOptimizer, &c.Optimizer, "adam", "sgd", "rmsprop"),
		str(HeadSchedule, &c.Schedule, "plateau", "cosine", "none"),
		num(HeadLR, &c.LR, func(x float64) bool { return x > 0 }, "a number > 0"),
		num(HeadL2, &c.L2, func(x float64) bool { return x >= 0 }, "a number >= 0"),
		num(HeadDropout, &c.Dropout, func(x float64) bool { return x >= 0 && x < 1 }, "a number in [0, 1)"),
		num(HeadMomentum, &c.Momentum, func(x float64) bool { return x >= 0 && x < 1 }, "a number in [0, 1)"),
		// 4096 is 40 times the seed's head and keeps a trial's memory
		// (weights, gradient, optimizer state) within a few hundred MiB.
		whole(HeadHidden, &c.Hidden, 1, 4096),
		whole(HeadPatience, &c.Patience, 0, 1<<20),
		whole(HeadBatchSize, &c.BatchSize, 1, 1<<20),
	)
}

// HeadObjective is the built-in trainer for a study with builtin: head on
// the features f, reporting metric (one of val_loss, val_acc, train_loss,
// train_acc) to the pruner and as the trial's value.
//
// Every trial sees the same slide-disjoint split: 20% of the rows for
// validation, chosen by a seed fixed here rather than the trial's. When a
// trial's params carry no batch_size, the ProbeBatchSize measurement runs
// on the training rows once per HeadObjective (at the first such trial;
// later and concurrent trials wait for it and reuse the result), never per
// trial, because the batch size is fixed per dataset. Every Epoch records
// the batch size it used (batch_size), so the journal shows what was
// probed. A probe measures time, so a resumed study (a new HeadObjective)
// may probe another size: a study that must rerun its trials exactly fixes
// batch_size (role: fixed), for example to what a first probe chose.
//
// A trial:
//   - trains up to in.MaxEpochs epochs, deterministic by in.Seed (He-normal
//     init of dense1, Glorot-uniform of dense2, per-epoch shuffles and
//     dropout masks from math/rand/v2 PCG streams of the seed);
//   - reports each epoch as epoch, train_loss, train_acc (running means
//     over the epoch's batches, dropout on, as Keras prints them),
//     val_loss, val_acc, grad_norm (mean L2 norm of the gradient of all
//     parameters over the epoch's batches, weight decay included), lr (the
//     rate the epoch trained with), best_epoch (the epoch with the lowest
//     val_loss so far) and batch_size; losses are cross-entropy without the weight decay term,
//     so they compare across l2 values;
//   - writes dense1.weight and dense2.weight histograms (30 bins) to
//     in.Dir/HistogramsFile after every epoch (skipped when in.Dir is "");
//   - calls keep(epoch, metric) after every epoch and, when it returns
//     false, stops as pruned with that epoch's value;
//   - with early stopping (patience > 0) stops after patience epochs
//     without a lower val_loss, restores the weights of the best epoch (as
//     the seed's Keras EarlyStopping(restore_best_weights=True)) and
//     reports the best epoch's metric as Value, also when it ran all its
//     epochs; with patience 0, Value is the last epoch's metric;
//   - fails (State failed, Value NaN, a reason naming the epoch, and the
//     batch for a training loss) when a loss becomes NaN or infinite: a
//     diverging run is a result, not an error.
//
// The error is non-nil when the trial cannot run at all (bad parameters,
// wrapping ErrHeadParams; a folder it cannot write) or ctx is cancelled.
func HeadObjective(f *Features, metric string) (TrialFunc, error) {
	return headObjective(f, nil, nil, metric, time.Now)
}

// HeadObjectiveOn is HeadObjective on a split the caller made: the trials
// train on the rows train and are judged on the rows val; other rows of f
// are never read. The retune worker uses it to keep its sealed test rows
// out of every trial. Both sets must be non-empty and must not share a
// row.
func HeadObjectiveOn(f *Features, train, val []int, metric string) (TrialFunc, error) {
	if len(train) == 0 || len(val) == 0 {
		return nil, fmt.Errorf("head: %w: %d training and %d validation rows; both must be non-empty", ErrBadFeatures, len(train), len(val))
	}
	return headObjective(f, train, val, metric, time.Now)
}

func headObjective(f *Features, train, val []int, metric string, clock func() time.Time) (TrialFunc, error) {
	if !slices.Contains(headMetrics, metric) {
		return nil, fmt.Errorf("head: metric %q: accepted %s", metric, strings.Join(headMetrics, ", "))
	}
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("head: %w", err)
	}
	if train == nil {
		train, val = SplitBySlide(f, headValFraction, headSplitSeed)
		if len(train) == 0 || len(val) == 0 {
			return nil, fmt.Errorf("head: %w: the features hold %d slide(s); a slide-disjoint validation split needs at least 2", ErrBadFeatures, len(distinct(f.Slide)))
		}
	} else if err := checkSplit(f, train, val); err != nil {
		return nil, fmt.Errorf("head: %w", err)
	}
	var (
		once  sync.Once
		probe int
	)
	return func(ctx context.Context, in TrialInput, keep func(int, float64) bool) (Outcome, error) {
		cfg, err := ParseHeadParams(in.Params)
		if err != nil {
			return Outcome{}, fmt.Errorf("trial %d: %w", in.Trial, err)
		}
		if in.MaxEpochs < 1 {
			return Outcome{}, fmt.Errorf("trial %d: max_epochs %d: a trial needs at least 1", in.Trial, in.MaxEpochs)
		}
		if cfg.BatchSize == 0 {
			once.Do(func() { probe = probeBatchSize(f, train, nil, clock) })
			cfg.BatchSize = probe
		}
		if in.Dir != "" {
			if err := os.MkdirAll(in.Dir, 0o755); err != nil {
				return Outcome{}, fmt.Errorf("trial %d: %w", in.Trial, err)
			}
		}
		_, o, err := trainHead(ctx, f, train, val, cfg, in, metric, keep)
		if err != nil {
			return Outcome{}, fmt.Errorf("trial %d: %w", in.Trial, err)
		}
		return o, nil
	}, nil
}

// checkSplit refuses row sets that index outside f or share a row: a row
// on both sides would validate on what was trained.
func checkSplit(f *Features, train, val []int) error {
	seen := make([]bool, f.N())
	for _, set := range [][]int{train, val} {
		for _, i := range set {
			if i < 0 || i >= f.N() {
				return fmt.Errorf("%w: split row %d: the features hold %d rows", ErrBadFeatures, i, f.N())
			}
			if seen[i] {
				return fmt.Errorf("%w: split row %d is listed twice (training and validation must be disjoint)", ErrBadFeatures, i)
			}
			seen[i] = true
		}
	}
	return nil
}

// HeadWeights is a trained head in inference.Head's PyTorch layout: W1
// [Hidden][In], B1 [Hidden], W2 [Classes][Hidden], B2 [Classes], rounded
// to float32 as head.safetensors stores them.
type HeadWeights struct {
	In, Hidden, Classes int
	W1, B1, W2, B2      []float32
}

// TrainHead trains one head exactly as a trial of HeadObjectiveOn with the
// same parameters, seed and epochs does (a trial's result is reproduced,
// not approximated), and returns the weights it keeps: the best epoch's
// with early stopping, the last epoch's without. cfg.BatchSize must be
// set (ProbeBatchSize, or the batch size the study's trials used).
func TrainHead(ctx context.Context, f *Features, train, val []int, cfg HeadConfig, seed int64, epochs int, metric string) (HeadWeights, Outcome, error) {
	if !slices.Contains(headMetrics, metric) {
		return HeadWeights{}, Outcome{}, fmt.Errorf("head: metric %q: accepted %s", metric, strings.Join(headMetrics, ", "))
	}
	if err := f.Validate(); err != nil {
		return HeadWeights{}, Outcome{}, fmt.Errorf("head: %w", err)
	}
	if len(train) == 0 || len(val) == 0 {
		return HeadWeights{}, Outcome{}, fmt.Errorf("head: %w: %d training and %d validation rows; both must be non-empty", ErrBadFeatures, len(train), len(val))
	}
	if err := checkSplit(f, train, val); err != nil {
		return HeadWeights{}, Outcome{}, fmt.Errorf("head: %w", err)
	}
	if cfg.BatchSize < 1 || epochs < 1 {
		return HeadWeights{}, Outcome{}, fmt.Errorf("head: %w: batch size %d and epochs %d must be at least 1", ErrHeadParams, cfg.BatchSize, epochs)
	}
	m, o, err := trainHead(ctx, f, train, val, cfg, TrialInput{Seed: seed, MaxEpochs: epochs}, metric, nil)
	if err != nil {
		return HeadWeights{}, Outcome{}, err
	}
	w1, b1, w2, b2 := m.split(m.p)
	return HeadWeights{In: m.in, Hidden: m.hidden, Classes: m.classes,
		W1: narrow(w1), B1: narrow(b1), W2: narrow(w2), B2: narrow(b2)}, o, nil
}

func narrow(v []float64) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = float32(x)
	}
	return out
}

// Probabilities computes the class probabilities of one feature row as
// inference.Head does (float64 sums over the float32 weights), so that
// a head can be judged in pure Go before it is exported.
func (w HeadWeights) Probabilities(x []float32, out []float64) {
	h := make([]float64, w.Hidden)
	for j := range w.Hidden {
		s := float64(w.B1[j])
		row := w.W1[j*w.In : (j+1)*w.In]
		for i, v := range row {
			s += float64(v) * float64(x[i])
		}
		h[j] = max(s, 0)
	}
	for k := range w.Classes {
		s := float64(w.B2[k])
		row := w.W2[k*w.Hidden : (k+1)*w.Hidden]
		for j, v := range row {
			s += float64(v) * h[j]
		}
		out[k] = s
	}
	mx := slices.Max(out[:w.Classes])
	var sum float64
	for k := range w.Classes {
		out[k] = math.Exp(out[k] - mx)
		sum += out[k]
	}
	for k := range w.Classes {
		out[k] /= sum
	}
}

func distinct(ss []string) map[string]bool {
	m := map[string]bool{}
	for _, s := range ss {
		m[s] = true
	}
	return m
}

// headModel is the head's parameters in one flat vector, so that the
// optimizers and the gradient norm treat them alike: dense1.weight
// [hidden][in], dense1.bias, dense2.weight [classes][hidden], dense2.bias.
type headModel struct {
	in, hidden, classes int
	p                   []float64
	w1, b1, w2, b2      []float64 // views into p
}

func newHeadModel(in, hidden, classes int) *headModel {
	m := &headModel{in: in, hidden: hidden, classes: classes, p: make([]float64, hidden*in+hidden+classes*hidden+classes)}
	m.w1, m.b1, m.w2, m.b2 = m.split(m.p)
	return m
}

// split cuts a vector shaped like p into the four tensors.
func (m *headModel) split(v []float64) (w1, b1, w2, b2 []float64) {
	a := m.hidden * m.in
	b := a + m.hidden
	c := b + m.classes*m.hidden
	return v[:a], v[a:b], v[b:c], v[c:]
}

// init draws dense1 He-normal (it feeds a ReLU) and dense2 Glorot-uniform
// (it feeds a softmax, as Keras' default); biases start at zero.
func (m *headModel) init(rng *rand.Rand) {
	s1 := math.Sqrt(2 / float64(m.in))
	for i := range m.w1 {
		m.w1[i] = rng.NormFloat64() * s1
	}
	s2 := math.Sqrt(6 / float64(m.hidden+m.classes))
	for i := range m.w2 {
		m.w2[i] = (2*rng.Float64() - 1) * s2
	}
	clear(m.b1)
	clear(m.b2)
}

// headScratch is one batch's working memory, allocated once per trial.
type headScratch struct {
	x    []float64 // [batch][in], the rows widened to float64
	a    []float64 // [batch][hidden], activations after ReLU and dropout
	dh   []float64 // [batch][hidden], gradient at the hidden layer
	z    []float64 // [classes]
	grad []float64 // like headModel.p
}

func newHeadScratch(m *headModel, batch int) *headScratch {
	return &headScratch{
		x: make([]float64, batch*m.in), a: make([]float64, batch*m.hidden), dh: make([]float64, batch*m.hidden),
		z: make([]float64, m.classes), grad: make([]float64, len(m.p)),
	}
}

// load widens rows idx of f into s.x.
func (s *headScratch) load(f *Features, idx []int) {
	for r, i := range idx {
		dst := s.x[r*f.Dim : (r+1)*f.Dim]
		for j, v := range f.Row(i) {
			dst[j] = float64(v)
		}
	}
}

// hiddenLayer computes the pre-activations of dense1 for the B rows in s.x
// into s.a. Four rows share each load of a weight row's values, which is
// what makes plain Go fast enough: this product is about half of a
// trial's time, the dense1 gradient most of the rest.
func (m *headModel) hiddenLayer(s *headScratch, B int) {
	in, H := m.in, m.hidden
	r := 0
	for ; r+4 <= B; r += 4 {
		x0, x1, x2, x3 := s.x[r*in:(r+1)*in], s.x[(r+1)*in:(r+2)*in], s.x[(r+2)*in:(r+3)*in], s.x[(r+3)*in:(r+4)*in]
		for j := range H {
			w := m.w1[j*in : (j+1)*in]
			// Reslicing to len(w) lets the compiler drop the bounds checks.
			x0, x1, x2, x3 := x0[:len(w)], x1[:len(w)], x2[:len(w)], x3[:len(w)]
			var s0, s1, s2, s3 float64
			for i, wi := range w {
				s0 += wi * x0[i]
				s1 += wi * x1[i]
				s2 += wi * x2[i]
				s3 += wi * x3[i]
			}
			b := m.b1[j]
			s.a[r*H+j], s.a[(r+1)*H+j], s.a[(r+2)*H+j], s.a[(r+3)*H+j] = b+s0, b+s1, b+s2, b+s3
		}
	}
	for ; r < B; r++ {
		x := s.x[r*in : (r+1)*in]
		for j := range H {
			w := m.w1[j*in : (j+1)*in]
			var s0 float64
			for i, wi := range w {
				s0 += wi * x[i]
			}
			s.a[r*H+j] = m.b1[j] + s0
		}
	}
}

// logits computes dense2 for one row's hidden activations into z.
func (m *headModel) logits(a, z []float64) {
	H := m.hidden
	for k := range m.classes {
		w := m.w2[k*H : (k+1)*H]
		v := m.b2[k]
		for j, wj := range w {
			v += wj * a[j]
		}
		z[k] = v
	}
}

// softmaxCE turns logits z into probabilities in place and returns the
// cross-entropy of class y, through log-sum-exp so that large logits do
// not overflow; non-finite logits give a NaN loss, which ends the trial.
func softmaxCE(z []float64, y int) float64 {
	mx := slices.Max(z)
	var sum float64
	for _, v := range z {
		sum += math.Exp(v - mx)
	}
	lse := mx + math.Log(sum)
	loss := lse - z[y]
	for k, v := range z {
		z[k] = math.Exp(v - lse)
	}
	return loss
}

// batchStats accumulates one pass's loss and accuracy.
type batchStats struct {
	loss    float64
	correct int
	n       int
}

func (b batchStats) meanLoss() float64 { return b.loss / float64(b.n) }

// add counts one sample's cross-entropy and whether its logits z got label
// y right.
func (b *batchStats) add(z []float64, y int) {
	b.loss += softmaxCE(z, y)
	b.n++
	if argmax(z) == y {
		b.correct++
	}
}
func (b batchStats) acc() float64 { return float64(b.correct) / float64(b.n) }

// step runs forward and backward on rows idx (already loaded into s.x) and
// leaves the mean gradient, weight decay included, in s.grad. dropout > 0
// draws a mask from rng.
func (m *headModel) step(s *headScratch, f *Features, idx []int, dropout, l2 float64, rng *rand.Rand) batchStats {
	B, in, H, C := len(idx), m.in, m.hidden, m.classes
	m.hiddenLayer(s, B)
	gw1, gb1, gw2, gb2 := m.split(s.grad)
	clear(s.grad)
	scale := 1 / (1 - dropout) // inverted dropout: no rescaling at inference
	inv := 1 / float64(B)
	var st batchStats
	for r, row := range idx {
		a := s.a[r*H : (r+1)*H]
		for j, v := range a {
			switch {
			case v <= 0:
				a[j] = 0
			case dropout > 0 && rng.Float64() < dropout:
				a[j] = 0
			default:
				a[j] = v * scale
			}
		}
		m.logits(a, s.z)
		y := f.Label[row]
		st.add(s.z, y)
		// dL/dz = p - onehot(y), averaged over the batch.
		s.z[y]--
		dh := s.dh[r*H : (r+1)*H]
		clear(dh)
		for k := range C {
			dz := s.z[k] * inv
			gb2[k] += dz
			w := m.w2[k*H : (k+1)*H]
			g := gw2[k*H : (k+1)*H]
			for j, aj := range a {
				g[j] += dz * aj
				dh[j] += dz * w[j]
			}
		}
		for j, aj := range a {
			if aj == 0 { // inactive or dropped: no gradient flows back
				dh[j] = 0
			} else {
				dh[j] *= scale
			}
			gb1[j] += dh[j]
		}
	}
	// gw1[j] += Σ_r dh[r][j] x[r], four rows at a time for the same reason
	// as hiddenLayer; blocks whose four rows all have a dead unit j are
	// skipped, which ReLU and dropout make common.
	r := 0
	for ; r+4 <= B; r += 4 {
		x0, x1, x2, x3 := s.x[r*in:(r+1)*in], s.x[(r+1)*in:(r+2)*in], s.x[(r+2)*in:(r+3)*in], s.x[(r+3)*in:(r+4)*in]
		for j := range H {
			d0, d1, d2, d3 := s.dh[r*H+j], s.dh[(r+1)*H+j], s.dh[(r+2)*H+j], s.dh[(r+3)*H+j]
			if d0 == 0 && d1 == 0 && d2 == 0 && d3 == 0 {
				continue
			}
			g := gw1[j*in : (j+1)*in]
			x0, x1, x2, x3 := x0[:len(g)], x1[:len(g)], x2[:len(g)], x3[:len(g)]
			for i := range g {
				g[i] += d0*x0[i] + d1*x1[i] + d2*x2[i] + d3*x3[i]
			}
		}
	}
	for ; r < B; r++ {
		x := s.x[r*in : (r+1)*in]
		for j := range H {
			d := s.dh[r*H+j]
			if d == 0 {
				continue
			}
			g := gw1[j*in : (j+1)*in]
			for i := range g {
				g[i] += d * x[i]
			}
		}
	}
	if l2 > 0 { // weight decay on the weights, not the biases
		for i, w := range m.w1 {
			gw1[i] += l2 * w
		}
		for i, w := range m.w2 {
			gw2[i] += l2 * w
		}
	}
	return st
}

func argmax(v []float64) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

// evaluate is the loss and accuracy on rows idx without dropout.
func (m *headModel) evaluate(s *headScratch, f *Features, idx []int, batch int) batchStats {
	var st batchStats
	H := m.hidden
	for lo := 0; lo < len(idx); lo += batch {
		part := idx[lo:min(lo+batch, len(idx))]
		s.load(f, part)
		m.hiddenLayer(s, len(part))
		for r, row := range part {
			a := s.a[r*H : (r+1)*H]
			for j, v := range a {
				a[j] = max(v, 0)
			}
			m.logits(a, s.z)
			st.add(s.z, f.Label[row])
		}
	}
	return st
}

// optimizer updates parameters from a gradient at a learning rate.
type optimizer interface {
	update(p, g []float64, lr float64)
}

// sgd is SGD with momentum in PyTorch's form (v = μv + g; p -= lr·v), so
// that a change of learning rate takes effect at once instead of through
// the velocity.
type sgd struct {
	mu float64
	v  []float64
}

func (o *sgd) update(p, g []float64, lr float64) {
	for i, gi := range g {
		o.v[i] = o.mu*o.v[i] + gi
		p[i] -= lr * o.v[i]
	}
}

type adam struct {
	t    int
	m, v []float64
}

func (o *adam) update(p, g []float64, lr float64) {
	o.t++
	c1 := 1 - math.Pow(adamBeta1, float64(o.t))
	c2 := 1 - math.Pow(adamBeta2, float64(o.t))
	for i, gi := range g {
		o.m[i] = adamBeta1*o.m[i] + (1-adamBeta1)*gi
		o.v[i] = adamBeta2*o.v[i] + (1-adamBeta2)*gi*gi
		p[i] -= lr * (o.m[i] / c1) / (math.Sqrt(o.v[i]/c2) + optimizerEps)
	}
}

type rmsprop struct {
	v []float64
}

func (o *rmsprop) update(p, g []float64, lr float64) {
	for i, gi := range g {
		o.v[i] = rmspropRho*o.v[i] + (1-rmspropRho)*gi*gi
		p[i] -= lr * gi / (math.Sqrt(o.v[i]) + optimizerEps)
	}
}

func newOptimizer(name string, n int, momentum float64) optimizer {
	switch name {
	case "sgd":
		return &sgd{mu: momentum, v: make([]float64, n)}
	case "rmsprop":
		return &rmsprop{v: make([]float64, n)}
	default:
		return &adam{m: make([]float64, n), v: make([]float64, n)}
	}
}

// plateau is Keras' ReduceLROnPlateau(factor=0.3, patience=2) on the
// validation loss, as the seed article schedules its runs: after patience
// epochs without an improvement of more than plateauMinDelta the rate is
// multiplied by the factor and the count starts again.
type plateau struct {
	best float64
	wait int
}

// next returns the rate for the next epoch after one that ended with
// valLoss at rate lr.
func (p *plateau) next(valLoss, lr float64) float64 {
	if valLoss < p.best-plateauMinDelta {
		p.best, p.wait = valLoss, 0
		return lr
	}
	p.wait++
	if p.wait >= plateauPatience {
		p.wait = 0
		return lr * plateauFactor
	}
	return lr
}

// cosineLR is the rate of epoch e (1-based) of E under cosine decay from
// lr0, per epoch: lr0 at the first, a few percent of it at the last (so
// the last epoch still trains).
func cosineLR(lr0 float64, e, E int) float64 {
	return lr0 * 0.5 * (1 + math.Cos(math.Pi*float64(e-1)/float64(E)))
}

// trainHead runs one trial. The split and batch size are settled by the
// caller.
func trainHead(ctx context.Context, f *Features, train, val []int, cfg HeadConfig, in TrialInput, metric string, keep func(int, float64) bool) (*headModel, Outcome, error) {
	seed := uint64(in.Seed)
	initRNG := rand.New(rand.NewPCG(seed, 1))
	shuffleRNG := rand.New(rand.NewPCG(seed, 2))
	dropRNG := rand.New(rand.NewPCG(seed, 3))

	m := newHeadModel(f.Dim, cfg.Hidden, len(f.Classes))
	m.init(initRNG)
	batch := min(cfg.BatchSize, len(train))
	s := newHeadScratch(m, batch)
	opt := newOptimizer(cfg.Optimizer, len(m.p), cfg.Momentum)
	order := slices.Clone(train)

	var (
		o        = Outcome{Value: math.NaN()}
		hist     = Histograms{Layers: []LayerHistograms{{Name: "dense1.weight"}, {Name: "dense2.weight"}}}
		lr       = cfg.LR
		sched    = plateau{best: math.Inf(1)}
		bestLoss = math.Inf(1)
		bestEp   = 0
		bestVal  = math.NaN()
		bestP    []float64
		since    = 0
	)
	fail := func(reason string) (*headModel, Outcome, error) {
		o.State, o.Value, o.Reason = StateFailed, math.NaN(), reason
		return m, o, nil
	}
	for epoch := 1; epoch <= in.MaxEpochs; epoch++ {
		if cfg.Schedule == "cosine" {
			lr = cosineLR(cfg.LR, epoch, in.MaxEpochs)
		}
		shuffleRNG.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		var (
			tr       batchStats
			normSum  float64
			nBatches int
		)
		for lo := 0; lo < len(order); lo += batch {
			// Checked per batch, not per epoch: an epoch of a large file
			// takes seconds, and a cancelled study should stop now.
			if err := ctx.Err(); err != nil {
				return nil, Outcome{}, err
			}
			idx := order[lo:min(lo+batch, len(order))]
			s.load(f, idx)
			bs := m.step(s, f, idx, cfg.Dropout, cfg.L2, dropRNG)
			if math.IsNaN(bs.loss) || math.IsInf(bs.loss, 0) {
				return fail(fmt.Sprintf("diverged: training loss is %v in epoch %d, batch %d (lr %g)", bs.loss, epoch, nBatches+1, lr))
			}
			var sq float64
			for _, g := range s.grad {
				sq += g * g
			}
			normSum += math.Sqrt(sq)
			nBatches++
			tr.loss += bs.loss
			tr.correct += bs.correct
			tr.n += bs.n
			opt.update(m.p, s.grad, lr)
		}
		vs := m.evaluate(s, f, val, batch)
		ep := Epoch{
			"epoch": float64(epoch), "train_loss": tr.meanLoss(), "train_acc": tr.acc(),
			"val_loss": vs.meanLoss(), "val_acc": vs.acc(), "grad_norm": normSum / float64(nBatches),
			"lr": lr, "batch_size": float64(batch),
		}
		if v := ep["val_loss"]; math.IsNaN(v) || math.IsInf(v, 0) {
			return fail(fmt.Sprintf("diverged: validation loss is %v after epoch %d (lr %g)", v, epoch, lr))
		}
		if ep["val_loss"] < bestLoss {
			bestLoss, bestEp, bestVal, since = ep["val_loss"], epoch, ep[metric], 0
			if cfg.Patience > 0 {
				bestP = append(bestP[:0], m.p...)
			}
		} else {
			since++
		}
		ep["best_epoch"] = float64(bestEp)
		o.Epochs = append(o.Epochs, ep)
		o.Value = ep[metric]

		hist.Layers[0].Epochs = append(hist.Layers[0].Epochs, Histogram(epoch, m.w1, histogramBins))
		hist.Layers[1].Epochs = append(hist.Layers[1].Epochs, Histogram(epoch, m.w2, histogramBins))
		if in.Dir != "" {
			if err := WriteHistograms(in.Dir, hist); err != nil {
				return nil, Outcome{}, err
			}
		}

		if keep != nil && !keep(epoch, ep[metric]) {
			o.State, o.Reason = StatePruned, fmt.Sprintf("stopped by the pruner after epoch %d", epoch)
			return m, o, nil
		}
		if cfg.Patience > 0 && since >= cfg.Patience {
			break
		}
		if cfg.Schedule == "plateau" {
			lr = sched.next(ep["val_loss"], lr)
		}
	}
	o.State = StateComplete
	if cfg.Patience > 0 {
		// The model kept is the best epoch's, so that is the value the
		// study compares and the head TrainHead exports.
		copy(m.p, bestP)
		o.Value = bestVal
	}
	return m, o, nil
}

// JournalledBatchSize is the batch size the first told trial of the study
// in dir reported, 0 when there is none: a resumed study keeps the batch
// size its trials were run with instead of probing again (a probe on a
// busier machine could choose another).
func JournalledBatchSize(dir string) int {
	recs, err := ReadJournal(filepath.Join(dir, "journal.jsonl"))
	if err != nil {
		return 0
	}
	for _, r := range recs {
		if r.Type != RecordTell || r.Outcome == nil {
			continue
		}
		for _, e := range r.Outcome.Epochs {
			if b, ok := e["batch_size"]; ok && b >= 1 {
				return int(b)
			}
		}
	}
	return 0
}

// ProbeBatchSize picks the batch size for a features file by throughput, as
// the seed article fixes it once per dataset: for each candidate (nil:
// 32, 64, 128, 256, 512; those above the row count are skipped) it trains
// the default head for one untimed step to warm up, then times a few steps
// probeReps times, two calls of clock each, and keeps the fastest repeat
// (a repeat slowed by another process says nothing about the batch size).
// It returns the candidate with the most samples per second, the smallest
// of those within 5% of the best (a smaller batch takes more steps per
// epoch, which helps at equal speed).
func ProbeBatchSize(f *Features, candidates []int, clock func() time.Time) int {
	all := make([]int, f.N())
	for i := range all {
		all[i] = i
	}
	return probeBatchSize(f, all, candidates, clock)
}

func probeBatchSize(f *Features, rows []int, candidates []int, clock func() time.Time) int {
	if len(candidates) == 0 {
		candidates = []int{32, 64, 128, 256, 512}
	}
	cs := slices.Clone(candidates)
	slices.Sort(cs)
	cs = slices.Compact(cs)
	cfg := DefaultHeadConfig()
	type rate struct {
		size int
		r    float64
	}
	var rates []rate
	for _, c := range cs {
		if c < 1 || c > len(rows) {
			continue
		}
		m := newHeadModel(f.Dim, cfg.Hidden, len(f.Classes))
		m.init(rand.New(rand.NewPCG(1, 1)))
		s := newHeadScratch(m, c)
		opt := newOptimizer(cfg.Optimizer, len(m.p), cfg.Momentum)
		rng := rand.New(rand.NewPCG(1, 3))
		// Enough samples per repeat that the timing is not noise, few
		// enough that the probe takes about a second on a 576-wide file.
		steps := max(2, 1024/c)
		run := func(steps int) {
			for k := range steps {
				lo := (k * c) % (len(rows) - c + 1)
				idx := rows[lo : lo+c]
				s.load(f, idx)
				m.step(s, f, idx, cfg.Dropout, cfg.L2, rng)
				opt.update(m.p, s.grad, cfg.LR)
			}
		}
		run(1)
		d := math.Inf(1)
		for range probeReps {
			t0 := clock()
			run(steps)
			d = min(d, clock().Sub(t0).Seconds())
		}
		r := math.Inf(1)
		if d > 0 {
			r = float64(steps*c) / d
		}
		rates = append(rates, rate{c, r})
	}
	if len(rates) == 0 {
		return max(1, min(cs[0], len(rows)))
	}
	best := rates[0].r
	for _, x := range rates {
		best = max(best, x.r)
	}
	for _, x := range rates { // ascending size: the first within 5% wins
		if x.r >= 0.95*best {
			return x.size
		}
	}
	return rates[0].size
}
