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

// Runner runs a study's search trials into a study folder.
type Runner struct {
	Study *Study
	Dir   string
	Trial TrialFunc
	Log   *slog.Logger     // nil: discard
	Now   func() time.Time // nil: time.Now
}

// Summary is the state of a study after Run.
type Summary struct {
	Best     *Trial `json:"best"`
	Trials   int    `json:"trials"`
	Complete int    `json:"complete"`
	Pruned   int    `json:"pruned"`
	Failed   int    `json:"failed"`
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

// Run runs every trial of the budget that the journal in Dir does not hold
// yet, Study.Budget.Parallel at a time, and returns the summary. It resumes
// a study folder: finished trials are kept, interrupted ones rerun with the
// parameters and seed they were asked with. Trials are asked in trial order
// and each ask is journalled before the trial starts.
//
// Every trial's parameters come from the scrambled Halton sequence of the
// study's seed, by trial number, so the sequence does not depend on
// Parallel. The Bayesian exploitation phase (trials after Budget.Explore)
// is not built yet: until it is, those trials continue the quasi-random
// sequence and are journalled with phase "explore", so nothing claims to be
// what it is not.
func (r *Runner) Run(ctx context.Context) (Summary, error) {
	log := r.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := r.Now
	if now == nil {
		now = time.Now
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
	if len(recs) == 0 {
		if err := j.Append(Record{Type: RecordStudy, At: now(), Study: s}); err != nil {
			return Summary{}, err
		}
	} else if err := sameStudy(recs[0], s); err != nil {
		return Summary{}, err
	}
	states, err := Replay(recs)
	if err != nil {
		return Summary{}, err
	}
	asked := map[int]Record{}
	told := map[int]Outcome{}
	for _, st := range states {
		asked[st.Ask.Trial] = st.Ask
		if st.Outcome != nil {
			told[st.Ask.Trial] = *st.Outcome
		}
	}

	space := NewSpace(s)
	seq, err := NewHalton(space.Dim(), rand.New(rand.NewPCG(uint64(s.Seed), 0x68616c746f6e)))
	if err != nil {
		return Summary{}, fmt.Errorf("exploration: %w", err)
	}

	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
		slots    = make(chan struct{}, s.Budget.Parallel)
	)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	for n := 1; n <= s.Budget.Trials; n++ {
		mu.Lock()
		_, done := told[n]
		mu.Unlock()
		if done {
			continue
		}
		select {
		case slots <- struct{}{}:
		case <-runCtx.Done():
		}
		if runCtx.Err() != nil {
			break
		}
		mu.Lock()
		ask, ok := asked[n]
		mu.Unlock()
		if !ok {
			u := seq.Point(n-1, make([]float64, space.Dim()))
			ask = Record{Type: RecordAsk, At: now(), Trial: n, Seed: trialSeed(s.Seed, n), Phase: "explore", Params: space.Params(u)}
			mu.Lock()
			err := j.Append(ask)
			if err == nil {
				asked[n] = ask
			} else if firstErr == nil {
				firstErr = err
			}
			mu.Unlock()
			if err != nil {
				<-slots
				break
			}
		} else {
			log.Info("rerunning interrupted trial", "trial", n)
		}
		wg.Add(1)
		go func(ask Record) {
			defer wg.Done()
			defer func() { <-slots }()
			in := TrialInput{Trial: ask.Trial, Seed: ask.Seed, Params: ask.Params, MaxEpochs: s.Budget.MaxEpochs,
				Dir: filepath.Join(r.Dir, "trials", fmt.Sprintf("%04d", ask.Trial))}
			o, err := r.Trial(runCtx, in, nil)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				cancel()
				return
			}
			if err := j.Append(Record{Type: RecordTell, At: now(), Trial: ask.Trial, Outcome: &o}); err != nil {
				if firstErr == nil {
					firstErr = err
				}
				cancel()
				return
			}
			told[ask.Trial] = o
			log.Info("trial finished", "trial", ask.Trial, "state", o.State, "value", o.Value, "reason", o.Reason)
		}(ask)
	}
	wg.Wait()
	if firstErr != nil {
		return Summary{}, firstErr
	}
	if err := ctx.Err(); err != nil {
		return Summary{}, err
	}
	return summarize(s, asked, told), nil
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

func summarize(s *Study, asked map[int]Record, told map[int]Outcome) Summary {
	sum := Summary{Trials: len(told)}
	for n := 1; n <= s.Budget.Trials; n++ {
		o, ok := told[n]
		if !ok {
			continue
		}
		switch o.State {
		case StateComplete:
			sum.Complete++
			if math.IsNaN(o.Value) {
				continue
			}
			better := sum.Best == nil ||
				(s.Objective.Direction == "minimize" && o.Value < sum.Best.Value) ||
				(s.Objective.Direction == "maximize" && o.Value > sum.Best.Value)
			if better {
				sum.Best = &Trial{Trial: n, Value: o.Value, Params: asked[n].Params}
			}
		case StatePruned:
			sum.Pruned++
		case StateFailed:
			sum.Failed++
		}
	}
	return sum
}
