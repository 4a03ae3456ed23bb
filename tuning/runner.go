package tuning

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

// TrialFunc runs one trial; keep is the pruner's verdict after each epoch
// (nil: never prune). RunCommand, bound to a study's command, is one.
type TrialFunc func(ctx context.Context, in TrialInput, keep func(epoch int, value float64) bool) (Outcome, error)

// CommandObjective is the trial protocol for argv and metric.
func CommandObjective(argv []string, metric string) TrialFunc {
	return func(ctx context.Context, in TrialInput, keep func(int, float64) bool) (Outcome, error) {
		return RunCommand(ctx, argv, in, metric, keep)
	}
}

// ErrStudyChanged is returned when a study folder's journal was begun by a
// different study file: resuming would mix two studies' trials.
var ErrStudyChanged = errors.New("the study file differs from the one the journal began with")

// SuggestFunc proposes the next unit-cube point from what is known: the
// finished trials (oriented so that lower is better) and the points still
// running. Suggest is the Gaussian-process one.
type SuggestFunc func(space *Space, obs []Observation, pending [][]float64, rng *rand.Rand) ([]float64, error)

// Runner runs a study into a study folder: the search trials, then the
// finalists' replicates.
type Runner struct {
	Study *Study
	Dir   string
	Trial TrialFunc
	// Suggest proposes exploitation trials; nil means Suggest, the
	// Gaussian-process suggester.
	Suggest SuggestFunc
	Log     *slog.Logger     // nil: discard
	Now     func() time.Time // nil: time.Now
	// Progress, if set, is called after every finished trial, with the
	// number done, the total (replicates included) and the best so far.
	Progress func(done, total int, best *Trial)
}

// Summary is the state of a study after Run, the object `tune run --format
// json` prints.
type Summary struct {
	Best     *Trial `json:"best"`
	Trials   int    `json:"trials"`
	Complete int    `json:"complete"`
	Pruned   int    `json:"pruned"`
	Failed   int    `json:"failed"`
	// Epochs is how many epochs the search trials ran in all, the cost that
	// pruning saves.
	Epochs int `json:"epochs"`
	// Replicates are the finalists rerun with the replicate seeds, best
	// mean first, and Comparison the winner against the runner-up on the
	// seeds they share.
	Replicates []Finalist `json:"replicates"`
	Comparison *Paired    `json:"comparison,omitempty"`
	// Warnings are the playbook's checks that failed (see Analyze).
	Warnings []string `json:"warnings,omitempty"`
}

// Trial is one finished trial.
type Trial struct {
	Trial  int     `json:"trial"`
	Value  float64 `json:"value"`
	Params Params  `json:"params"`
}

// trialSeed derives a trial's seed from the study's, so that a trial's
// randomness depends on its number only, never on scheduling.
func trialSeed(study int64, trial int) int64 {
	x := uint64(study)*0x9e3779b97f4a7c15 + uint64(trial)
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return int64(x >> 1)
}

// replicateSeed is the j-th replicate seed, the same for every finalist and
// disjoint in derivation from the search trials' seeds.
func replicateSeed(study int64, j int) int64 { return trialSeed(^study, j+1) }

// phase of search trial n.
func phaseOf(s *Study, n int) string {
	if n <= s.Budget.Explore {
		return "explore"
	}
	return "exploit"
}

// run is one Run's shared state.
type run struct {
	r     *Runner
	s     *Study
	log   *slog.Logger
	now   func() time.Time
	space *Space
	seq   *Halton
	prune pruner
	j     *Journal

	mu       sync.Mutex
	asked    map[int]Record
	told     map[int]Outcome
	done     map[int]chan struct{} // closed when the trial is told
	firstErr error
	total    int
}

func (st *run) doneCh(n int) chan struct{} {
	st.mu.Lock()
	defer st.mu.Unlock()
	ch, ok := st.done[n]
	if !ok {
		ch = make(chan struct{})
		st.done[n] = ch
	}
	return ch
}

// isTold reports whether trial n has its outcome.
func (st *run) isTold(n int) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	_, ok := st.told[n]
	return ok
}

// waitTold blocks until search trials 1..k are told.
func (st *run) waitTold(ctx context.Context, k int) error {
	for m := 1; m <= k; m++ {
		select {
		case <-st.doneCh(m):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (st *run) fail(err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.firstErr == nil {
		st.firstErr = err
	}
}

// oriented turns a metric into lower-is-better.
func (st *run) oriented(v float64) float64 {
	if st.s.Objective.Direction == "maximize" {
		return -v
	}
	return v
}

// Run runs every trial that the journal in Dir does not hold yet,
// Study.Budget.Parallel at a time, and returns the summary. It resumes a
// study folder: finished trials are kept, interrupted ones rerun with the
// parameters and seed they were asked with. Trials are asked in trial order
// and each ask is journalled before the trial starts.
//
// Exploration trials take the scrambled Halton point of their number (as do
// exploitation trials while fewer than two trials have succeeded).
// Exploitation trial n is suggested from the outcomes of trials
// 1..n-Overlap with trials n-Overlap+1..n-1 as pending points, and pruning
// decisions are made against the same trials, so nothing a trial is asked or
// told depends on Parallel or on timing. After the search, the best
// Replicates.Finalists trials are rerun with Replicates.Seeds seeds each.
func (r *Runner) Run(ctx context.Context) (Summary, error) {
	st := &run{r: r, s: r.Study, log: r.Log, now: r.Now,
		asked: map[int]Record{}, told: map[int]Outcome{}, done: map[int]chan struct{}{}}
	if st.log == nil {
		st.log = slog.New(slog.DiscardHandler)
	}
	if st.now == nil {
		st.now = time.Now
	}
	s := r.Study
	if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		return Summary{}, fmt.Errorf("study folder: %w", err)
	}
	j, recs, err := OpenJournal(filepath.Join(r.Dir, "journal.jsonl"))
	if err != nil {
		return Summary{}, err
	}
	defer j.Close()
	st.j = j
	if len(recs) == 0 {
		if err := j.Append(Record{Type: RecordStudy, At: st.now(), Study: s}); err != nil {
			return Summary{}, err
		}
	} else if err := sameStudy(recs[0], s); err != nil {
		return Summary{}, err
	}
	states, err := Replay(recs)
	if err != nil {
		return Summary{}, err
	}
	for _, ts := range states {
		st.asked[ts.Ask.Trial] = ts.Ask
		if ts.Outcome != nil {
			st.told[ts.Ask.Trial] = *ts.Outcome
			close(st.doneCh(ts.Ask.Trial))
		}
	}
	st.space = NewSpace(s)
	st.seq, err = NewHalton(st.space.Dim(), rand.New(rand.NewPCG(uint64(s.Seed), 0x68616c746f6e)))
	if err != nil {
		return Summary{}, fmt.Errorf("exploration: %w", err)
	}
	st.prune = newPruner(s)
	st.total = s.Budget.Trials + s.Replicates.Finalists*s.Replicates.Seeds

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	slots := make(chan struct{}, s.Budget.Parallel)
	var wg sync.WaitGroup
	start := func(ask Record, keep func(int, float64) bool) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			if err := st.runTrial(runCtx, ask, keep); err != nil {
				st.fail(err)
				cancel()
			}
		}()
	}

	// acquire waits for a free slot; false when the run is being cancelled.
	acquire := func() bool {
		select {
		case slots <- struct{}{}:
			return true
		case <-runCtx.Done():
			return false
		}
	}

	for n := 1; n <= s.Budget.Trials && runCtx.Err() == nil; n++ {
		if st.isTold(n) || !acquire() {
			continue
		}
		st.mu.Lock()
		ask, asked := st.asked[n]
		st.mu.Unlock()
		if !asked {
			ask, err = st.ask(runCtx, n)
			if err != nil {
				<-slots
				if runCtx.Err() == nil {
					st.fail(err)
					cancel()
				}
				continue
			}
		} else {
			st.log.Info("rerunning interrupted trial", "trial", n)
		}
		start(ask, st.keeper(runCtx, n))
	}
	wg.Wait()

	if runCtx.Err() == nil && s.Replicates.Finalists > 0 {
		reps, err := st.replicateAsks()
		if err != nil {
			st.fail(err)
		}
		for _, ask := range reps {
			if runCtx.Err() != nil {
				break
			}
			if st.isTold(ask.Trial) || !acquire() {
				continue
			}
			start(ask, nil)
		}
		wg.Wait()
	}
	if st.firstErr != nil {
		return Summary{}, st.firstErr
	}
	if err := ctx.Err(); err != nil {
		return Summary{}, err
	}
	return summarize(filepath.Join(r.Dir, "journal.jsonl"))
}

// ask makes and journals search trial n's parameters.
func (st *run) ask(ctx context.Context, n int) (Record, error) {
	s := st.s
	ask := Record{Type: RecordAsk, Trial: n, Seed: trialSeed(s.Seed, n), Phase: phaseOf(s, n)}
	suggest := st.r.Suggest
	if suggest == nil {
		suggest = Suggest
	}
	var u []float64
	if ask.Phase == "exploit" {
		lag := s.Budget.Overlap
		if err := st.waitTold(ctx, n-lag); err != nil {
			return Record{}, err
		}
		obs, pending, err := st.evidence(n)
		if err != nil {
			return Record{}, err
		}
		rng := rand.New(rand.NewPCG(uint64(s.Seed), uint64(n)))
		u, err = suggest(st.space, obs, pending, rng)
		switch {
		case errors.Is(err, ErrTooFewObservations):
			// Too many failures to fit a model yet: keep exploring, and
			// journal the trial as what it is.
			st.log.Warn("too few successful trials to model; exploring on", "trial", n)
			ask.Phase, u = "explore", nil
		case err != nil:
			return Record{}, fmt.Errorf("trial %d: suggest: %w", n, err)
		}
	}
	if u == nil {
		u = st.seq.Point(n-1, make([]float64, st.space.Dim()))
	}
	ask.Params = st.space.Params(u)
	ask.At = st.now()
	st.mu.Lock()
	defer st.mu.Unlock()
	if err := st.j.Append(ask); err != nil {
		return Record{}, err
	}
	st.asked[n] = ask
	return ask, nil
}

// evidence is what suggestion n is conditioned on: the outcomes of trials
// 1..n-Overlap and, as pending, the parameters of the trials after them.
// Failed trials are kept as failures, so the search learns to avoid their
// region; a pruned trial counts with the last value it reported, which is
// what it was judged on.
func (st *run) evidence(n int) ([]Observation, [][]float64, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	var obs []Observation
	var pending [][]float64
	for m := 1; m < n; m++ {
		u, err := st.space.Point(st.asked[m].Params)
		if err != nil {
			return nil, nil, fmt.Errorf("trial %d: %w", m, err)
		}
		if m > n-st.s.Budget.Overlap {
			pending = append(pending, u)
			continue
		}
		o := st.told[m]
		switch {
		case o.State == StateFailed || math.IsNaN(o.Value):
			obs = append(obs, Observation{Point: u, Failed: true})
		default:
			obs = append(obs, Observation{Point: u, Value: st.oriented(o.Value)})
		}
	}
	return obs, pending, nil
}

// keeper is search trial n's pruning verdict after each epoch.
func (st *run) keeper(ctx context.Context, n int) func(int, float64) bool {
	if st.s.Pruning.Method == PruneNone {
		return nil
	}
	b := st.prune.bracket(n)
	metric := st.s.Objective.Metric
	return func(e int, v float64) bool {
		if !st.prune.isRung(b, e) {
			return true
		}
		last := n - st.s.Budget.Overlap
		if st.waitTold(ctx, last) != nil {
			return true // cancelled: the trial is being stopped anyway
		}
		st.mu.Lock()
		var peers []float64
		for m := 1; m <= last; m++ {
			if st.prune.bracket(m) != b {
				continue
			}
			if pv, ok := valueAt(st.told[m], metric, e); ok {
				peers = append(peers, st.oriented(pv))
			}
		}
		st.mu.Unlock()
		return st.prune.keep(st.oriented(v), peers)
	}
}

// runTrial runs one asked trial and journals its outcome.
func (st *run) runTrial(ctx context.Context, ask Record, keep func(int, float64) bool) error {
	in := TrialInput{Trial: ask.Trial, Seed: ask.Seed, Params: ask.Params, MaxEpochs: st.s.Budget.MaxEpochs,
		Dir: filepath.Join(st.r.Dir, "trials", fmt.Sprintf("%04d", ask.Trial))}
	if err := os.MkdirAll(in.Dir, 0o755); err != nil {
		return fmt.Errorf("trial %d: %w", ask.Trial, err)
	}
	o, err := st.r.Trial(ctx, in, keep)
	if err != nil {
		return err
	}
	st.mu.Lock()
	if err := st.j.Append(Record{Type: RecordTell, At: st.now(), Trial: ask.Trial, Outcome: &o}); err != nil {
		st.mu.Unlock()
		return err
	}
	st.told[ask.Trial] = o
	ch, ok := st.done[ask.Trial]
	if !ok {
		ch = make(chan struct{})
		st.done[ask.Trial] = ch
	}
	close(ch)
	doneN := len(st.told)
	var best *Trial
	if st.r.Progress != nil {
		best = currentBest(st.s, st.asked, st.told)
	}
	st.mu.Unlock()
	st.log.Info("trial finished", "trial", ask.Trial, "phase", ask.Phase, "state", o.State, "value", o.Value, "reason", o.Reason)
	if st.r.Progress != nil {
		st.r.Progress(doneN, st.total, best)
	}
	return nil
}

// finalists are the best complete search trials with distinct parameters,
// best first, ties broken by trial number.
func finalists(s *Study, asked map[int]Record, told map[int]Outcome) []int {
	var cand []int
	for n := 1; n <= s.Budget.Trials; n++ {
		o, ok := told[n]
		if ok && o.State == StateComplete && !math.IsNaN(o.Value) {
			cand = append(cand, n)
		}
	}
	sort.SliceStable(cand, func(i, j int) bool { return s.Better(told[cand[i]].Value, told[cand[j]].Value) })
	var out []int
	for _, n := range cand {
		dup := false
		for _, m := range out {
			if sameParams(asked[n].Params, asked[m].Params) {
				dup = true
			}
		}
		if !dup {
			out = append(out, n)
		}
		if len(out) == s.Replicates.Finalists {
			break
		}
	}
	return out
}

func sameParams(a, b Params) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || !sameValue(v, w) {
			return false
		}
	}
	return true
}

// replicateAsks journals (or, on resume, finds) the replicate trials:
// finalist i's j-th replicate is trial Trials + i*Seeds + j + 1.
func (st *run) replicateAsks() ([]Record, error) {
	s := st.s
	st.mu.Lock()
	defer st.mu.Unlock()
	fin := finalists(s, st.asked, st.told)
	var out []Record
	for i, f := range fin {
		for k := 0; k < s.Replicates.Seeds; k++ {
			n := s.Budget.Trials + i*s.Replicates.Seeds + k + 1
			if ask, ok := st.asked[n]; ok {
				if ask.Of != f {
					return nil, fmt.Errorf("%w: replicate trial %d reruns trial %d, but the finalists now put trial %d there", ErrCorruptJournal, n, ask.Of, f)
				}
				out = append(out, ask)
				continue
			}
			ask := Record{Type: RecordAsk, At: st.now(), Trial: n, Seed: replicateSeed(s.Seed, k), Phase: "replicate", Of: f, Params: st.asked[f].Params}
			if err := st.j.Append(ask); err != nil {
				return nil, err
			}
			st.asked[n] = ask
			out = append(out, ask)
		}
	}
	st.total = s.Budget.Trials + len(fin)*s.Replicates.Seeds
	return out, nil
}

func sameStudy(first Record, s *Study) error {
	if first.Type != RecordStudy || first.Study == nil {
		return fmt.Errorf("%w: the first record is not the study", ErrCorruptJournal)
	}
	// Parallel is how the study is scheduled, not what it asks: it never
	// changes a suggestion, so a study may resume with another one.
	x, y := *first.Study, *s
	x.Budget.Parallel, y.Budget.Parallel = 0, 0
	a, err1 := json.Marshal(x)
	b, err2 := json.Marshal(y)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("compare studies: %w", errors.Join(err1, err2))
	}
	if string(a) != string(b) {
		return ErrStudyChanged
	}
	return nil
}

// summarize is the study's summary as its journal tells it: the same
// analysis the report draws, so the two never disagree.
func summarize(path string) (Summary, error) {
	recs, err := ReadJournal(path)
	if err != nil {
		return Summary{}, err
	}
	a, err := Analyze(recs)
	if err != nil {
		return Summary{}, err
	}
	sum := Summary{Trials: a.Counts.Trials, Complete: a.Counts.Complete, Pruned: a.Counts.Pruned, Failed: a.Counts.Failed,
		Replicates: a.Finalists, Comparison: a.Comparison, Warnings: a.Warnings}
	if sum.Replicates == nil {
		sum.Replicates = []Finalist{}
	}
	if a.Best != nil {
		sum.Best = &Trial{Trial: a.Best.Trial, Value: a.Best.Value, Params: a.Best.Params}
	}
	for _, t := range a.Trials {
		if t.Search() {
			sum.Epochs += len(t.Epochs)
		}
	}
	return sum, nil
}

// currentBest is the best complete search trial so far, for progress.
func currentBest(s *Study, asked map[int]Record, told map[int]Outcome) *Trial {
	var best *Trial
	for n := 1; n <= s.Budget.Trials; n++ {
		o, ok := told[n]
		if !ok || o.State != StateComplete || math.IsNaN(o.Value) {
			continue
		}
		if best == nil || s.Better(o.Value, best.Value) {
			best = &Trial{Trial: n, Value: o.Value, Params: asked[n].Params}
		}
	}
	return best
}
