package tuning

import (
	"context"
	"errors"
	"math"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
)

const runnerStudy = `name: runner
objective: {command: [unused], metric: value, direction: minimize}
parameters:
  - {name: x, role: nuisance, type: float, min: -5, max: 10}
  - {name: y, role: nuisance, type: float, min: 0, max: 15}
  - {name: opt, role: scientific, type: categorical, values: [a, b]}
  - {name: epochs, role: fixed, value: 3}
budget: {trials: 12, explore: 12, parallel: PARALLEL}
seed: 5
`

func runnerTestStudy(t *testing.T, parallel string) *Study {
	t.Helper()
	s, err := Decode(strings.NewReader(strings.Replace(runnerStudy, "PARALLEL", parallel, 1)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// branin is a deterministic objective; trials whose x is above 8 fail.
func branin(_ context.Context, in TrialInput, _ func(int, float64) bool) (Outcome, error) {
	x, y := in.Params["x"].(float64), in.Params["y"].(float64)
	if x > 8 {
		return Outcome{State: StateFailed, Value: math.NaN(), Reason: "x above 8"}, nil
	}
	v := math.Pow(y-5.1/(4*math.Pi*math.Pi)*x*x+5/math.Pi*x-6, 2) + 10*(1-1/(8*math.Pi))*math.Cos(x) + 10
	return Outcome{State: StateComplete, Value: v}, nil
}

func asks(t *testing.T, dir string) []Record {
	t.Helper()
	recs, err := ReadJournal(filepath.Join(dir, "journal.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	trials, err := Replay(recs)
	if err != nil {
		t.Fatal(err)
	}
	var out []Record
	for _, tr := range trials {
		a := tr.Ask
		out = append(out, Record{Trial: a.Trial, Seed: a.Seed, Params: a.Params, Phase: a.Phase})
	}
	return out
}

func TestRunnerSameSuggestionsWhateverParallel(t *testing.T) {
	var got [][]Record
	var sums []Summary
	for _, p := range []string{"1", "2", "5"} {
		dir := t.TempDir()
		r := &Runner{Study: runnerTestStudy(t, p), Dir: dir, Trial: branin}
		sum, err := r.Run(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, asks(t, dir))
		sums = append(sums, sum)
	}
	for i := 1; i < len(got); i++ {
		if !reflect.DeepEqual(got[0], got[i]) {
			t.Fatalf("suggestions differ between parallel settings:\n%v\n%v", got[0], got[i])
		}
		if !reflect.DeepEqual(sums[0], sums[i]) {
			t.Fatalf("summaries differ: %+v vs %+v", sums[0], sums[i])
		}
	}
	s := sums[0]
	if s.Trials != 12 || s.Complete+s.Failed != 12 || s.Failed == 0 || s.Best == nil {
		t.Fatalf("summary %+v: want 12 trials, some failed (x > 8), a best one", s)
	}
	if s.Best.Params["epochs"] != float64(3) {
		t.Fatalf("fixed parameter missing from the trial's params: %v", s.Best.Params)
	}
}

func TestRunnerResumesAfterInterruption(t *testing.T) {
	whole := t.TempDir()
	want, err := (&Runner{Study: runnerTestStudy(t, "2"), Dir: whole, Trial: branin}).Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	var n atomic.Int32
	interrupting := func(ctx context.Context, in TrialInput, keep func(int, float64) bool) (Outcome, error) {
		if n.Add(1) > 5 {
			cancel() // the process dies with trials in flight
			return Outcome{}, ctx.Err()
		}
		return branin(ctx, in, keep)
	}
	if _, err := (&Runner{Study: runnerTestStudy(t, "2"), Dir: dir, Trial: interrupting}).Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted run: %v", err)
	}
	var rerun []int
	counting := func(ctx context.Context, in TrialInput, keep func(int, float64) bool) (Outcome, error) {
		rerun = append(rerun, in.Trial)
		return branin(ctx, in, keep)
	}
	got, err := (&Runner{Study: runnerTestStudy(t, "1"), Dir: dir, Trial: counting}).Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("resumed summary %+v, uninterrupted %+v", got, want)
	}
	if !reflect.DeepEqual(asks(t, dir), asks(t, whole)) {
		t.Fatal("resumed study asked other parameters than the uninterrupted one")
	}
	if len(rerun) != 12-5 {
		t.Fatalf("resume ran trials %v; want only the 7 not finished", rerun)
	}
	// Parallel is a scheduling choice, not part of the question: resuming
	// with another one is allowed above. Changing the question is not.
	changed := runnerTestStudy(t, "1")
	changed.Seed = 6
	if _, err := (&Runner{Study: changed, Dir: dir, Trial: branin}).Run(context.Background()); !errors.Is(err, ErrStudyChanged) {
		t.Fatalf("changed study: %v", err)
	}
}

// The acceptance rule of the tuning issue: with Bayesian exploitation, the
// same study gives the same suggestions whatever Parallel is.
func TestRunnerExploitSameWhateverParallel(t *testing.T) {
	var got [][]Record
	var sums []Summary
	for _, p := range []string{"1", "2", "3"} {
		s := runnerTestStudy(t, p)
		s.Budget.Trials, s.Budget.Explore = 16, 6
		dir := t.TempDir()
		sum, err := (&Runner{Study: s, Dir: dir, Trial: branin}).Run(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, asks(t, dir))
		sums = append(sums, sum)
	}
	exploit := 0
	for _, a := range got[0] {
		if a.Phase == "exploit" {
			exploit++
		}
	}
	if exploit != 10 {
		t.Fatalf("%d exploitation trials, want 10", exploit)
	}
	for i := 1; i < len(got); i++ {
		if !reflect.DeepEqual(got[0], got[i]) || !reflect.DeepEqual(sums[0], sums[i]) {
			t.Fatalf("parallel changed the study:\n%v\n%v", got[0], got[i])
		}
	}
	// Exploitation must beat its own exploration on a smooth function.
	bestExplore := math.Inf(1)
	for n := 1; n <= 6; n++ {
		if v, ok := braninAt(got[0][n-1].Params); ok {
			bestExplore = min(bestExplore, v)
		}
	}
	if sums[0].Best.Value >= bestExplore {
		t.Fatalf("best %v after exploitation, %v after exploration alone", sums[0].Best.Value, bestExplore)
	}
}

func braninAt(p Params) (float64, bool) {
	o, _ := branin(context.Background(), TrialInput{Params: p}, nil)
	return o.Value, o.State == StateComplete
}
