package tuning

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// separable is the dataset of the trainer's tests: two clusters 4.5
// standard deviations apart in 64 dimensions over 25 slides. The best
// possible accuracy is Φ(2.25) ≈ 98.8%, so a head above 95% has learnt the
// boundary nearly as well as it can be learnt, and a half-working trainer
// does not get there.
func separable() *Features { return gaussianFeatures(2000, 64, 25, 4.5, 1) }

// noise has labels unrelated to the features: whatever the head learns is
// memorised, so the validation loss rises once training starts to fit.
func noise() *Features { return gaussianFeatures(300, 64, 10, 0, 2) }

func headTrial(t *testing.T, f *Features, metric string, params Params, epochs int, seed int64, keep func(int, float64) bool) Outcome {
	t.Helper()
	obj, err := HeadObjective(f, metric)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := params[HeadBatchSize]; !ok {
		params[HeadBatchSize] = 64 // no probe: tests stay deterministic and fast
	}
	o, err := obj(context.Background(), TrialInput{Trial: 1, Seed: seed, Params: params, MaxEpochs: epochs, Dir: t.TempDir()}, keep)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestHeadLearnsSeparableData(t *testing.T) {
	o := headTrial(t, separable(), "val_acc", Params{}, 5, 1, nil)
	if o.State != StateComplete {
		t.Fatalf("state %s (%s)", o.State, o.Reason)
	}
	if o.Value <= 0.95 {
		t.Fatalf("val_acc %.3f, want > 0.95; epochs %v", o.Value, o.Epochs)
	}
	keys := []string{"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "grad_norm", "lr", "batch_size", "best_epoch"}
	for i, ep := range o.Epochs {
		for _, k := range keys {
			v, ok := ep[k]
			if !ok || math.IsNaN(v) {
				t.Fatalf("epoch %d lacks %s: %v", i+1, k, ep)
			}
		}
		if ep["epoch"] != float64(i+1) || ep["batch_size"] != 64 || ep["grad_norm"] <= 0 {
			t.Errorf("epoch %d: %v", i+1, ep)
		}
	}
	if len(o.Epochs) != 5 {
		t.Errorf("%d epochs, want 5", len(o.Epochs))
	}
}

func TestHeadDeterministicBySeed(t *testing.T) {
	f := separable()
	p := func() Params { return Params{"dropout": 0.3, "lr": 0.001} }
	a := headTrial(t, f, "val_loss", p(), 3, 7, nil)
	b := headTrial(t, f, "val_loss", p(), 3, 7, nil)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("same seed, different outcomes:\n%v\n%v", a, b)
	}
	c := headTrial(t, f, "val_loss", p(), 3, 8, nil)
	if c.Epochs[0]["train_loss"] == a.Epochs[0]["train_loss"] || c.Value == a.Value {
		t.Fatalf("seeds 7 and 8 gave the same training: %v", c.Epochs[0])
	}
}

// TestHeadConcurrentTrials: the runner calls one TrialFunc from several
// goroutines; trials share the features and the probe, and must come out as
// they do one at a time.
func TestHeadConcurrentTrials(t *testing.T) {
	f := separable()
	obj, err := HeadObjective(f, "val_loss")
	if err != nil {
		t.Fatal(err)
	}
	run := func(seed int64) Outcome {
		o, err := obj(context.Background(), TrialInput{Seed: seed, Params: Params{"batch_size": 64}, MaxEpochs: 2, Dir: t.TempDir()}, nil)
		if err != nil {
			t.Error(err)
		}
		return o
	}
	want := []Outcome{run(1), run(2)}
	got := make([]Outcome, 2)
	var wg sync.WaitGroup
	for i := range got {
		wg.Add(1)
		go func() { defer wg.Done(); got[i] = run(int64(i + 1)) }()
	}
	wg.Wait()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("concurrent trials differ from sequential ones")
	}
}

func TestHeadOptimizersTrain(t *testing.T) {
	f := separable()
	for _, c := range []struct {
		opt string
		lr  float64
	}{{"adam", 0.001}, {"sgd", 0.01}, {"rmsprop", 0.001}} {
		t.Run(c.opt, func(t *testing.T) {
			o := headTrial(t, f, "train_loss", Params{"optimizer": c.opt, "lr": c.lr, "schedule": "none", "patience": 0}, 4, 3, nil)
			first, last := o.Epochs[0]["train_loss"], o.Epochs[len(o.Epochs)-1]["train_loss"]
			if o.State != StateComplete || !(last < 0.5*first) {
				t.Fatalf("%s: train_loss %.4f -> %.4f (state %s); want it to at least halve", c.opt, first, last, o.State)
			}
		})
	}
	// The optimizers are not one and the same.
	a := headTrial(t, f, "train_loss", Params{"optimizer": "adam", "lr": 0.001}, 1, 3, nil)
	b := headTrial(t, f, "train_loss", Params{"optimizer": "rmsprop", "lr": 0.001}, 1, 3, nil)
	if a.Value == b.Value {
		t.Errorf("adam and rmsprop trained identically")
	}
}

func TestPlateauSchedule(t *testing.T) {
	cases := []struct {
		name string
		loss []float64
		want []float64 // the rate after each epoch, from 1
	}{
		{"improving", []float64{1, 0.9, 0.8, 0.7}, []float64{1, 1, 1, 1}},
		{"two flat epochs", []float64{1, 1, 1, 0.5, 0.6, 0.7}, []float64{1, 1, 0.3, 0.3, 0.3, 0.09}},
		{"tiny gain is no gain", []float64{1, 0.99995, 0.99991}, []float64{1, 1, 0.3}},
		{"count restarts after a cut", []float64{1, 2, 2, 2, 2}, []float64{1, 1, 0.3, 0.3, 0.09}},
		{"improvement resets", []float64{1, 2, 0.5, 2, 0.4}, []float64{1, 1, 1, 1, 1}},
	}
	for _, c := range cases {
		p := plateau{best: math.Inf(1)}
		lr := 1.0
		for i, l := range c.loss {
			lr = p.next(l, lr)
			if math.Abs(lr-c.want[i]) > 1e-12 {
				t.Errorf("%s: after epoch %d rate %g, want %g", c.name, i+1, lr, c.want[i])
			}
		}
	}
}

// TestHeadPlateauInTraining checks the lr key of a real run against the rule
// applied to the val_loss the run reported, on a dataset whose val_loss
// stalls so that the rule fires.
func TestHeadPlateauInTraining(t *testing.T) {
	o := headTrial(t, noise(), "val_loss", Params{"schedule": "plateau", "patience": 0, "lr": 0.01}, 8, 1, nil)
	p := plateau{best: math.Inf(1)}
	lr, cuts := 0.01, 0
	for i, ep := range o.Epochs {
		if math.Abs(ep["lr"]-lr) > 1e-15 {
			t.Fatalf("epoch %d trained at %g, want %g; epochs %v", i+1, ep["lr"], lr, o.Epochs)
		}
		next := p.next(ep["val_loss"], lr)
		if next != lr {
			cuts++
		}
		lr = next
	}
	if cuts == 0 {
		t.Fatalf("the rate was never cut on a dataset whose val_loss rises: %v", o.Epochs)
	}
	// And with schedule none it never moves.
	n := headTrial(t, noise(), "val_loss", Params{"schedule": "none", "patience": 0, "lr": 0.01}, 8, 1, nil)
	for _, ep := range n.Epochs {
		if ep["lr"] != 0.01 {
			t.Fatalf("schedule none changed the rate: %v", ep)
		}
	}
}

func TestHeadCosineSchedule(t *testing.T) {
	o := headTrial(t, separable(), "val_loss", Params{"schedule": "cosine", "patience": 0, "lr": 0.01}, 10, 1, nil)
	if o.Epochs[0]["lr"] != 0.01 {
		t.Errorf("first epoch at %g, want the initial 0.01", o.Epochs[0]["lr"])
	}
	for i := 1; i < len(o.Epochs); i++ {
		if !(o.Epochs[i]["lr"] < o.Epochs[i-1]["lr"]) {
			t.Fatalf("cosine rate does not decrease at epoch %d: %v", i+1, o.Epochs)
		}
	}
	if last := o.Epochs[9]["lr"]; last <= 0 || last > 0.05*0.01 {
		t.Errorf("last epoch at %g, want near 0 (at most 5%% of the initial)", last)
	}
}

func TestHeadEarlyStopping(t *testing.T) {
	o := headTrial(t, noise(), "val_acc", Params{"patience": 2, "lr": 0.01}, 30, 1, nil)
	n := len(o.Epochs)
	if o.State != StateComplete || n >= 30 {
		t.Fatalf("state %s after %d epochs; want early stopping well before 30", o.State, n)
	}
	last := o.Epochs[n-1]
	best := int(last["best_epoch"])
	if n-best != 2 {
		t.Errorf("stopped at epoch %d, best %d; want 2 epochs of patience", n, best)
	}
	// The value is the restored best epoch's, not the last one's.
	if o.Value != o.Epochs[best-1]["val_acc"] {
		t.Errorf("value %g, want the best epoch's val_acc %g", o.Value, o.Epochs[best-1]["val_acc"])
	}
	for _, ep := range o.Epochs {
		if ep["val_loss"] < o.Epochs[best-1]["val_loss"] {
			t.Errorf("epoch %v has a lower val_loss than the best epoch %d", ep, best)
		}
	}
	// patience 0 runs every epoch and reports the last one.
	all := headTrial(t, noise(), "val_acc", Params{"patience": 0, "lr": 0.01}, 12, 1, nil)
	if len(all.Epochs) != 12 || all.Value != all.Epochs[11]["val_acc"] {
		t.Errorf("patience 0: %d epochs, value %g; want 12 and the last epoch's", len(all.Epochs), all.Value)
	}
}

func TestHeadPruned(t *testing.T) {
	var seen []int
	keep := func(epoch int, v float64) bool {
		seen = append(seen, epoch)
		return epoch < 2
	}
	o := headTrial(t, separable(), "val_loss", Params{}, 10, 1, keep)
	if o.State != StatePruned || len(o.Epochs) != 2 || !reflect.DeepEqual(seen, []int{1, 2}) {
		t.Fatalf("state %s, %d epochs, keep saw %v; want pruned after epoch 2", o.State, len(o.Epochs), seen)
	}
	if o.Value != o.Epochs[1]["val_loss"] || o.Reason == "" {
		t.Errorf("value %g reason %q; want epoch 2's val_loss and a reason", o.Value, o.Reason)
	}
}

func TestHeadDivergesToFailed(t *testing.T) {
	o := headTrial(t, separable(), "val_loss", Params{"optimizer": "sgd", "lr": 1e6}, 5, 1, nil)
	if o.State != StateFailed || !math.IsNaN(o.Value) || !strings.Contains(o.Reason, "diverged") {
		t.Fatalf("state %s value %g reason %q; want failed, NaN, diverged", o.State, o.Value, o.Reason)
	}
	if _, err := o.MarshalJSON(); err != nil {
		t.Errorf("a failed outcome must journal: %v", err)
	}
}

func TestHeadParams(t *testing.T) {
	cases := []struct {
		params Params
		want   string // "" accepts
	}{
		{Params{}, ""},
		{Params{"optimizer": "sgd", "momentum": 0.5, "lr": 0.1, "l2": 1e-4, "dropout": 0, "hidden": 32, "schedule": "cosine", "patience": 0, "batch_size": 248}, ""},
		{Params{"hidden": 64.0, "batch_size": int64(32)}, ""}, // JSON and YAML numbers
		{Params{"learning_rate": 0.1, "epochs": 3}, `unknown ["epochs" "learning_rate"]`},
		{Params{"optimizer": "adagrad"}, "optimizer: adagrad: accepted adam, sgd, rmsprop"},
		{Params{"lr": 0.0}, "lr: 0"},
		{Params{"lr": "fast"}, "lr: fast"},
		{Params{"lr": math.NaN()}, "lr"},
		{Params{"dropout": 1.0}, "dropout: 1"},
		{Params{"hidden": 10.5}, "hidden: 10.5: accepted a whole number"},
		{Params{"schedule": "step"}, "schedule: step"},
		{Params{"patience": -1}, "patience"},
		{Params{"batch_size": 0}, "batch_size"},
		{Params{"momentum": 1.0}, "momentum"},
	}
	for _, c := range cases {
		_, err := ParseHeadParams(c.params)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v: %v", c.params, err)
		case c.want != "" && (!errors.Is(err, ErrHeadParams) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%v: got %v, want ErrHeadParams with %q", c.params, err, c.want)
		}
	}
	cfg, _ := ParseHeadParams(Params{"optimizer": "sgd", "hidden": 64.0})
	if cfg.Optimizer != "sgd" || cfg.Hidden != 64 || cfg.LR != DefaultHeadConfig().LR {
		t.Errorf("parsed %+v", cfg)
	}

	// The trial refuses them as an error (the study is wrong, every trial
	// would fail alike), naming the key.
	obj, err := HeadObjective(separable(), "val_loss")
	if err != nil {
		t.Fatal(err)
	}
	_, err = obj(context.Background(), TrialInput{Trial: 3, Params: Params{"learning_rate": 0.1}, MaxEpochs: 1, Dir: t.TempDir()}, nil)
	if !errors.Is(err, ErrHeadParams) || !strings.Contains(err.Error(), "learning_rate") {
		t.Errorf("unknown param: %v", err)
	}
}

func TestHeadObjectiveRefuses(t *testing.T) {
	if _, err := HeadObjective(separable(), "accuracy"); err == nil || !strings.Contains(err.Error(), "val_loss, val_acc, train_loss, train_acc") {
		t.Errorf("metric accuracy: %v; want the accepted metrics listed", err)
	}
	if _, err := HeadObjective(gaussianFeatures(50, 4, 1, 1, 1), "val_loss"); !errors.Is(err, ErrBadFeatures) || !strings.Contains(err.Error(), "1 slide") {
		t.Errorf("one slide: %v", err)
	}
	bad := separable()
	bad.Label[0] = 5
	if _, err := HeadObjective(bad, "val_loss"); !errors.Is(err, ErrBadFeatures) {
		t.Errorf("invalid features: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	obj, _ := HeadObjective(separable(), "val_loss")
	if _, err := obj(ctx, TrialInput{Params: Params{"batch_size": 64}, MaxEpochs: 3, Dir: t.TempDir()}, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
}

func TestHeadHistograms(t *testing.T) {
	f := separable()
	obj, _ := HeadObjective(f, "val_loss")
	dir := t.TempDir()
	o, err := obj(context.Background(), TrialInput{Seed: 1, Params: Params{"batch_size": 64, "hidden": 20, "patience": 0}, MaxEpochs: 3, Dir: dir}, nil)
	if err != nil || o.State != StateComplete {
		t.Fatalf("%v %v", o, err)
	}
	h, err := ReadHistograms(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"dense1.weight": 20 * 64, "dense2.weight": 2 * 20}
	if len(h.Layers) != 2 {
		t.Fatalf("%d layers, want 2", len(h.Layers))
	}
	for _, l := range h.Layers {
		n, ok := want[l.Name]
		if !ok || len(l.Epochs) != 3 {
			t.Fatalf("layer %q with %d epochs; want dense1.weight and dense2.weight over 3 epochs", l.Name, len(l.Epochs))
		}
		for i, e := range l.Epochs {
			sum := 0
			for _, c := range e.Counts {
				sum += c
			}
			if e.Epoch != i+1 || len(e.Counts) != 30 || sum != n {
				t.Errorf("%s epoch %d: %d bins holding %d weights; want 30 bins, %d", l.Name, e.Epoch, len(e.Counts), sum, n)
			}
		}
		if reflect.DeepEqual(l.Epochs[0].Counts, l.Epochs[2].Counts) && reflect.DeepEqual(l.Epochs[0].Edges, l.Epochs[2].Edges) {
			t.Errorf("%s did not change over training", l.Name)
		}
	}
}

// fakeClock returns times whose differences, two calls per timed repeat,
// are the given durations: the probe then "measures" them.
func fakeClock(durations []time.Duration) func() time.Time {
	t := time.Unix(0, 0)
	calls := 0
	return func() time.Time {
		if calls%2 == 1 {
			t = t.Add(durations[calls/2])
		}
		calls++
		return t
	}
}

// thrice repeats each candidate's duration for the probe's three repeats.
func thrice(ds ...time.Duration) []time.Duration {
	var out []time.Duration
	for _, d := range ds {
		out = append(out, d, d, d)
	}
	return out
}

func TestProbeBatchSize(t *testing.T) {
	f := gaussianFeatures(600, 8, 4, 1, 1)
	// Every candidate processes max(2, 1024/c)*c samples per repeat: 1024
	// for these.
	ms := time.Millisecond
	cases := []struct {
		name string
		d    []time.Duration // three repeats each of 32, 64, 128, 256, 512
		want int
	}{
		{"fastest wins", thrice(100*ms, 80*ms, 50*ms, 60*ms, 90*ms), 128},
		{"ties go to the smaller", thrice(100*ms, 51*ms, 50*ms, 50*ms, 50*ms), 64},
		{"just beyond 5% is no tie", thrice(100*ms, 53*ms, 50*ms, 80*ms, 80*ms), 128},
		// 64's first repeat was slowed by another process: its best counts.
		{"fastest repeat counts", []time.Duration{100 * ms, 100 * ms, 100 * ms, 400 * ms, 40 * ms, 45 * ms, 50 * ms, 50 * ms, 50 * ms, 60 * ms, 60 * ms, 60 * ms, 90 * ms, 90 * ms, 90 * ms}, 64},
	}
	for _, c := range cases {
		if got := ProbeBatchSize(f, nil, fakeClock(c.d)); got != c.want {
			t.Errorf("%s: chose %d, want %d", c.name, got, c.want)
		}
	}
	// Candidates above the row count are skipped; order does not matter.
	small := gaussianFeatures(100, 8, 4, 1, 1)
	if got := ProbeBatchSize(small, []int{512, 64, 32, 128}, fakeClock(thrice(2*ms, ms))); got != 64 {
		t.Errorf("100 rows: chose %d, want 64 (512 and 128 do not fit)", got)
	}
	// With the real clock it returns one of the candidates.
	if got := ProbeBatchSize(f, nil, time.Now); got != 32 && got != 64 && got != 128 && got != 256 && got != 512 {
		t.Errorf("real clock: %d", got)
	}
}

// TestHeadObjectiveProbesOnce: trials without batch_size share one probe,
// and the chosen size is recorded in every epoch.
func TestHeadObjectiveProbesOnce(t *testing.T) {
	calls := 0
	clock := func() time.Time { calls++; return time.Unix(0, int64(calls)*int64(time.Millisecond)) }
	obj, err := headObjective(gaussianFeatures(600, 8, 4, 1, 1), nil, nil, "val_loss", clock)
	if err != nil {
		t.Fatal(err)
	}
	var sizes []float64
	for trial := range 3 {
		o, err := obj(context.Background(), TrialInput{Trial: trial, Seed: int64(trial), Params: Params{}, MaxEpochs: 1, Dir: t.TempDir()}, nil)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, o.Epochs[0]["batch_size"])
	}
	// The probe runs on the 480 training rows, so 512 does not fit: one
	// probe of 4 candidates × 3 repeats is 24 calls.
	if calls != 4*3*2 {
		t.Errorf("clock called %d times over 3 trials; want one probe of 4 candidates × 3 repeats (24)", calls)
	}
	if sizes[0] != sizes[1] || sizes[1] != sizes[2] || sizes[0] < 32 {
		t.Errorf("batch sizes %v", sizes)
	}
}

// TestHeadGradient checks the backward pass against finite differences of
// the loss, so that a training bug cannot hide behind "the loss still goes
// down". With dropout, every evaluation draws the same mask from a freshly
// seeded generator (the perturbations are too small to switch a unit on or
// off, which is what decides the draws).
func TestHeadGradient(t *testing.T) {
	for _, c := range []struct{ dropout, l2 float64 }{{0, 0}, {0, 0.01}, {0.5, 0.01}} {
		f := gaussianFeatures(7, 5, 2, 2, 9)
		m := newHeadModel(5, 6, 3)
		f.Classes = append(f.Classes, "third")
		f.Label[3] = 2
		m.init(rand.New(rand.NewPCG(1, 1)))
		for i := range m.b1 {
			m.b1[i] = 0.1 // keep units off the ReLU kink
		}
		idx := []int{0, 1, 2, 3, 4, 5, 6}
		s := newHeadScratch(m, len(idx))
		forward := func() float64 {
			s.load(f, idx)
			st := m.step(s, f, idx, c.dropout, c.l2, rand.New(rand.NewPCG(5, 5)))
			var pen float64
			for _, w := range m.w1 {
				pen += w * w
			}
			for _, w := range m.w2 {
				pen += w * w
			}
			return st.meanLoss() + c.l2/2*pen
		}
		forward()
		grad := append([]float64(nil), s.grad...)
		const h = 1e-6
		for i := range m.p {
			orig := m.p[i]
			m.p[i] = orig + h
			up := forward()
			m.p[i] = orig - h
			down := forward()
			m.p[i] = orig
			num := (up - down) / (2 * h)
			if math.Abs(num-grad[i]) > 1e-6+1e-4*math.Abs(num) {
				t.Errorf("dropout %g l2 %g: parameter %d: backward %g, finite difference %g", c.dropout, c.l2, i, grad[i], num)
			}
		}
	}
}

func BenchmarkHeadEpoch(b *testing.B) {
	for _, dim := range []int{576, 1024} {
		b.Run(map[int]string{576: "dim576", 1024: "dim1024"}[dim], func(b *testing.B) {
			f := gaussianFeatures(10000, dim, 50, 3, 1)
			train, val := SplitBySlide(f, headValFraction, headSplitSeed)
			cfg := DefaultHeadConfig()
			cfg.BatchSize = 128
			in := TrialInput{Seed: 1, MaxEpochs: 1}
			b.ResetTimer()
			for range b.N {
				if _, _, err := trainHead(context.Background(), f, train, val, cfg, in, "val_loss", nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
