package tuning

import (
	"context"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
)

func TestPrunerRungs(t *testing.T) {
	cases := []struct {
		name              string
		method            string
		grace, eta, max   int
		brackets, bracket int
		rungs             []int
	}{
		{"asha", PruneASHA, 1, 3, 10, 1, 0, []int{1, 3, 9}},
		{"asha grace 2", PruneASHA, 2, 2, 20, 1, 0, []int{2, 4, 8, 16}},
		{"hyperband first bracket", PruneHyperband, 1, 3, 27, 4, 0, []int{1, 3, 9}},
		{"hyperband later bracket", PruneHyperband, 1, 3, 27, 4, 1, []int{3, 9}},
		{"hyperband last bracket never prunes", PruneHyperband, 1, 3, 27, 4, 3, nil},
		{"none", PruneNone, 1, 3, 27, 1, 0, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := pruner{method: c.method, grace: c.grace, eta: c.eta, maxEpochs: c.max}
			if got := p.brackets(); got != c.brackets {
				t.Fatalf("brackets = %d, want %d", got, c.brackets)
			}
			var rungs []int
			for e := 1; e <= c.max; e++ {
				if p.isRung(c.bracket, e) {
					rungs = append(rungs, e)
				}
			}
			if !reflect.DeepEqual(rungs, c.rungs) {
				t.Fatalf("rungs %v, want %v", rungs, c.rungs)
			}
		})
	}
}

func TestPrunerKeep(t *testing.T) {
	p := pruner{method: PruneASHA, grace: 1, eta: 3, maxEpochs: 9}
	cases := []struct {
		v     float64
		peers []float64
		keep  bool
	}{
		{5, nil, true},                        // no evidence
		{5, []float64{1}, true},               // two values are still no evidence
		{0.5, []float64{1, 2}, true},          // best of 3 goes on
		{1.5, []float64{1, 2}, false},         // second of 3 stops
		{1.5, []float64{1, 2, 3, 4, 5}, true}, // 6 values: the best 2 go on
		{2.5, []float64{1, 2, 3, 4, 5}, false},
	}
	for _, c := range cases {
		if got := p.keep(c.v, c.peers); got != c.keep {
			t.Errorf("keep(%v, %v) = %v, want %v", c.v, c.peers, got, c.keep)
		}
	}
}

const prunedStudy = `name: pruned
objective: {command: [unused], metric: loss, direction: minimize}
parameters:
  - {name: x, role: nuisance, type: float, min: 0, max: 1}
budget: {trials: 30, explore: 30, parallel: PARALLEL, overlap: 3, max_epochs: 9}
pruning: {method: METHOD, grace_epochs: 1, reduction: 3}
seed: 11
`

// curve reports loss (x-0.3)^2 + 1/epoch every epoch: the ranking of trials
// is the same at every epoch, so pruning should lose nothing.
func curve(_ context.Context, in TrialInput, keep func(int, float64) bool) (Outcome, error) {
	x := in.Params["x"].(float64)
	o := Outcome{State: StateComplete}
	for e := 1; e <= in.MaxEpochs; e++ {
		v := (x-0.3)*(x-0.3) + 1/float64(e)
		o.Epochs = append(o.Epochs, Epoch{"epoch": float64(e), "loss": v})
		o.Value = v
		if keep != nil && !keep(e, v) {
			o.State, o.Reason = StatePruned, fmt.Sprintf("stopped after epoch %d", e)
			break
		}
	}
	return o, nil
}

func TestRunnerPrunes(t *testing.T) {
	study := func(parallel, method string) *Study {
		s, err := Decode(strings.NewReader(strings.NewReplacer("PARALLEL", parallel, "METHOD", method).Replace(prunedStudy)))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	full, err := (&Runner{Study: study("1", "none"), Dir: t.TempDir(), Trial: curve}).Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if full.Epochs != 30*9 || full.Pruned != 0 {
		t.Fatalf("without pruning: %d epochs, %d pruned; want 270, 0", full.Epochs, full.Pruned)
	}
	for _, method := range []string{PruneASHA, PruneHyperband} {
		t.Run(method, func(t *testing.T) {
			var sums []Summary
			var journals [][]Record
			for _, par := range []string{"1", "3"} {
				dir := t.TempDir()
				sum, err := (&Runner{Study: study(par, method), Dir: dir, Trial: curve}).Run(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				sums = append(sums, sum)
				journals = append(journals, outcomes(t, dir))
			}
			if !reflect.DeepEqual(sums[0], sums[1]) || !reflect.DeepEqual(journals[0], journals[1]) {
				t.Fatalf("pruning depends on parallel:\n%+v\n%+v", sums[0], sums[1])
			}
			s := sums[0]
			if s.Pruned == 0 || s.Epochs >= full.Epochs*2/3 {
				t.Fatalf("%s pruned %d trials and ran %d of %d epochs; want real savings", method, s.Pruned, s.Epochs, full.Epochs)
			}
			if s.Best.Trial != full.Best.Trial || math.Abs(s.Best.Value-full.Best.Value) > 1e-12 {
				t.Fatalf("%s best %+v, without pruning %+v: a faithful ranking must not lose the best", method, s.Best, full.Best)
			}
		})
	}
}

// outcomes is each trial's number, state and epochs as journalled.
func outcomes(t *testing.T, dir string) []Record {
	t.Helper()
	var out []Record
	for _, a := range asks(t, dir) {
		out = append(out, a)
	}
	recs, err := ReadJournal(dir + "/journal.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	trials, err := Replay(recs)
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range trials {
		o := *tr.Outcome
		out = append(out, Record{Trial: tr.Ask.Trial, Outcome: &Outcome{State: o.State, Epochs: o.Epochs}})
	}
	return out
}

func TestRunnerReplicatesFinalists(t *testing.T) {
	s, err := Decode(strings.NewReader(strings.NewReplacer("PARALLEL", "2", "METHOD", "none", "trials: 30, explore: 30", "trials: 10, explore: 10").Replace(prunedStudy) +
		"replicates: {finalists: 2, seeds: 3}\n"))
	if err != nil {
		t.Fatal(err)
	}
	// Seed noise: the replicate's value moves with its seed.
	noisy := func(ctx context.Context, in TrialInput, keep func(int, float64) bool) (Outcome, error) {
		o, err := curve(ctx, in, keep)
		o.Value += float64(in.Seed%1000) / 1e6
		return o, err
	}
	dir := t.TempDir()
	sum, err := (&Runner{Study: s, Dir: dir, Trial: noisy}).Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Replicates) != 2 {
		t.Fatalf("replicates %+v, want 2 finalists", sum.Replicates)
	}
	if sum.Replicates[0].Trial != sum.Best.Trial {
		t.Fatalf("first finalist is trial %d, best is %d", sum.Replicates[0].Trial, sum.Best.Trial)
	}
	a, b := sum.Replicates[0], sum.Replicates[1]
	if !reflect.DeepEqual(a.Seeds, b.Seeds) || len(a.Seeds) != 3 || a.Seeds[0] == a.Seeds[1] {
		t.Fatalf("finalists must share 3 distinct seeds: %v vs %v", a.Seeds, b.Seeds)
	}
	if a.Std == 0 || math.IsNaN(a.Mean) || len(a.Values) != 3 {
		t.Fatalf("replicate stats %+v", a)
	}
	if sum.Trials != 10 {
		t.Fatalf("trials %d: replicates must not count as search trials", sum.Trials)
	}
	// A resumed study finds the replicates done and runs nothing.
	ran := 0
	counting := func(ctx context.Context, in TrialInput, keep func(int, float64) bool) (Outcome, error) {
		ran++
		return noisy(ctx, in, keep)
	}
	again, err := (&Runner{Study: s, Dir: dir, Trial: counting}).Run(context.Background())
	if err != nil || ran != 0 || !reflect.DeepEqual(again, sum) {
		t.Fatalf("resume of a finished study ran %d trials (err %v)", ran, err)
	}
}
