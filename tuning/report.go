package tuning

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// StateUnfinished is the state the report gives a trial that was asked but
// never told: it was interrupted and a resumed study reruns it.
const StateUnfinished = "unfinished"

// Thresholds of the report's refusals and warnings.
const (
	// minIsolationTrials is how many complete trials a scientific value
	// needs before its best value is compared with the others': with fewer,
	// its nuisance parameters are not tuned and the comparison says more
	// about the search than about the value.
	minIsolationTrials = 3
	// boundMargin is how close (in the unit, or log, space of the range) the
	// best trial may come to a search bound before the report says the
	// optimum may lie outside the range.
	boundMargin = 0.05
	// maxFailedShare is the share of failed trials above which the report
	// warns that the search space or the trainer is broken somewhere.
	maxFailedShare = 0.20
)

// TrialResult is one trial of a study as the journal tells it: the ask
// paired with its tell.
type TrialResult struct {
	Trial int `json:"trial"`
	// Phase is explore or exploit for a search trial, replicate for a
	// finalist's rerun.
	Phase string `json:"phase"`
	// Of is, for a replicate, the search trial it reruns.
	Of     int    `json:"of,omitempty"`
	Seed   int64  `json:"seed"`
	Params Params `json:"params"`
	// State is complete, pruned, failed or unfinished.
	State string `json:"state"`
	// Value is the metric: the final one of a complete trial, the last one
	// reported by a pruned trial, NaN otherwise.
	Value  float64 `json:"value"`
	Epochs []Epoch `json:"epochs,omitempty"`
	Reason string  `json:"reason,omitempty"`
}

// nullable is v for JSON, which has no NaN: null for a value that does not
// exist.
func nullable(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return &v
}

// MarshalJSON writes a NaN value (failed or unfinished trial) as null.
func (t TrialResult) MarshalJSON() ([]byte, error) {
	type plain TrialResult
	return json.Marshal(struct {
		plain
		Value *float64 `json:"value"`
	}{plain(t), nullable(t.Value)})
}

// Search reports whether the trial is a search trial (not a replicate).
func (t TrialResult) Search() bool { return t.Phase != "replicate" }

// Counts are the search trials by state.
type Counts struct {
	Trials     int `json:"trials"`
	Complete   int `json:"complete"`
	Pruned     int `json:"pruned"`
	Failed     int `json:"failed"`
	Unfinished int `json:"unfinished"`
}

// BestPoint is the best value reached up to and including a trial.
type BestPoint struct {
	Trial int     `json:"trial"`
	Value float64 `json:"value"`
}

// IsolationRow is one value of a scientific parameter: the best the study
// reached with the nuisance parameters tuned for that value, the seed
// article's way of comparing scientific values fairly.
type IsolationRow struct {
	Parameter string `json:"parameter"`
	Value     any    `json:"value"`
	Label     string `json:"label"`
	// Trials counts the finished search trials with this value; Complete
	// those of them that completed.
	Trials   int          `json:"trials"`
	Complete int          `json:"complete"`
	Best     *TrialResult `json:"best,omitempty"`
	// BestSoFar is the best value over this value's complete trials, in
	// trial order: a curve still falling at the end says this value's
	// nuisance search is not finished.
	BestSoFar []BestPoint `json:"best_so_far,omitempty"`
	// Refusal is set when the value has too few complete trials to be
	// compared with the others.
	Refusal string `json:"refusal,omitempty"`
}

// Importance is one searched parameter's share of the explained variance
// (see Analyze).
type Importance struct {
	Parameter string  `json:"parameter"`
	Share     float64 `json:"share"`
	// Bins is how many groups the trials were split into for it.
	Bins int `json:"bins"`
}

// Finalist is a search trial rerun with other seeds.
type Finalist struct {
	Trial       int     `json:"trial"`
	Params      Params  `json:"params"`
	SearchValue float64 `json:"search_value"`
	// Values and Seeds are the complete replicates'. The search trial's own
	// value is left out: it was picked for being good, so counting it would
	// bias the mean towards luck.
	Values []float64 `json:"values"`
	Seeds  []int64   `json:"seeds"`
	// Runs are the replicate trials' numbers, parallel to Values: the
	// folder under trials/ that holds what each replicate wrote.
	Runs       []int   `json:"runs"`
	Replicates int     `json:"replicates"`
	Mean       float64 `json:"mean"`
	// Std is the sample standard deviation (n-1); NaN with one value.
	Std float64 `json:"std"`
}

// MarshalJSON writes the statistics that do not exist (no complete
// replicate, or a single one) as null.
func (f Finalist) MarshalJSON() ([]byte, error) {
	type plain Finalist
	return json.Marshal(struct {
		plain
		SearchValue *float64 `json:"search_value"`
		Mean        *float64 `json:"mean"`
		Std         *float64 `json:"std"`
	}{plain(f), nullable(f.SearchValue), nullable(f.Mean), nullable(f.Std)})
}

// Paired compares the best finalist with the runner-up on the seeds both
// were replicated with: a paired difference cancels the part of the seed
// noise the two share.
type Paired struct {
	Winner   int `json:"winner"`
	RunnerUp int `json:"runner_up"`
	// Mean and Std are of winner − runner-up over the shared seeds.
	Mean float64 `json:"mean"`
	Std  float64 `json:"std"`
	N    int     `json:"n"`
	// WithinNoise is set when |Mean| is below two standard errors: these
	// seeds do not tell the two apart.
	WithinNoise bool `json:"within_noise"`
}

// MarshalJSON writes the standard deviation of a single pair as null.
func (p Paired) MarshalJSON() ([]byte, error) {
	type plain Paired
	return json.Marshal(struct {
		plain
		Std *float64 `json:"std"`
	}{plain(p), nullable(p.Std)})
}

// Analysis is what the report says about a study, computed from its journal
// alone so that the runner and the command line can reuse it.
type Analysis struct {
	Study *Study `json:"study"`
	// Trials are every trial, search and replicates, in trial order.
	Trials []TrialResult `json:"trials"`
	Counts Counts        `json:"counts"`
	// Best is the best complete search trial; Top the best three, best
	// first.
	Best       *TrialResult   `json:"best,omitempty"`
	Top        []TrialResult  `json:"top,omitempty"`
	Isolation  []IsolationRow `json:"isolation,omitempty"`
	Importance []Importance   `json:"importance,omitempty"`
	// Finalists are ordered by replicate mean, best first.
	Finalists  []Finalist `json:"finalists,omitempty"`
	Comparison *Paired    `json:"comparison,omitempty"`
	Warnings   []string   `json:"warnings,omitempty"`
	// Notes say what could not be computed and why.
	Notes []string `json:"notes,omitempty"`
}

// Better reports whether value x beats y in the study's direction.
func (a *Analysis) Better(x, y float64) bool { return a.Study.Better(x, y) }

// Analyze folds a study's journal into an Analysis: trials paired by number,
// the best trial and the top three, the isolation rows of each scientific
// parameter, the parameters' importance, the finalists and their paired
// comparison, and the warnings.
//
// Importance is a marginal, functional-ANOVA-style estimate: for each
// searched parameter alone, the complete search trials are grouped (by
// level for a categorical parameter or an int with at most 6 values seen,
// otherwise into equal-count quantile bins, between 2 and 5 of them, about 4
// trials per bin) and the share of the values' variance the group means
// explain is taken, corrected for what k groups explain by chance
// (ε² = (SSB − (k−1)·SSW/(n−k)) / SST, at least 0; the plain η² = SSB/SST
// gives a parameter that does nothing about (k−1)/(n−1)). The shares are
// then normalised to sum to 1. It ignores interactions, so a parameter that
// matters only together with another looks unimportant: it says where to
// look, not what matters.
func Analyze(recs []Record) (*Analysis, error) {
	var study *Study
	for _, r := range recs {
		if r.Type == RecordStudy && r.Study != nil {
			study = r.Study
			break
		}
	}
	if study == nil {
		return nil, fmt.Errorf("analyze: %w: the journal has no study record", ErrCorruptJournal)
	}
	// The study drives every bound and level below; a journal edited by hand
	// must not make the report index a missing range.
	if err := study.Validate(); err != nil {
		return nil, fmt.Errorf("analyze: the journal's study: %w", err)
	}
	states, err := Replay(recs)
	if err != nil {
		return nil, fmt.Errorf("analyze: %w", err)
	}
	a := &Analysis{Study: study}
	for _, st := range states {
		t := TrialResult{Trial: st.Ask.Trial, Phase: st.Ask.Phase, Of: st.Ask.Of, Seed: st.Ask.Seed,
			Params: st.Ask.Params, State: StateUnfinished, Value: math.NaN()}
		if o := st.Outcome; o != nil {
			t.State, t.Value, t.Epochs, t.Reason = o.State, o.Value, o.Epochs, o.Reason
			if t.State == StateFailed {
				t.Value = math.NaN()
			}
		}
		a.Trials = append(a.Trials, t)
	}
	slices.SortFunc(a.Trials, func(x, y TrialResult) int { return cmp.Compare(x.Trial, y.Trial) })

	var complete []TrialResult // search trials with a value, trial order
	for _, t := range a.Trials {
		if !t.Search() {
			continue
		}
		a.Counts.Trials++
		switch t.State {
		case StateComplete:
			a.Counts.Complete++
			if !math.IsNaN(t.Value) {
				complete = append(complete, t)
			}
		case StatePruned:
			a.Counts.Pruned++
		case StateFailed:
			a.Counts.Failed++
		default:
			a.Counts.Unfinished++
		}
	}
	ranked := slices.Clone(complete)
	slices.SortStableFunc(ranked, func(x, y TrialResult) int {
		switch {
		case a.Better(x.Value, y.Value):
			return -1
		case a.Better(y.Value, x.Value):
			return 1
		}
		return 0
	})
	if len(ranked) > 0 {
		best := ranked[0]
		a.Best = &best
		a.Top = ranked[:min(3, len(ranked))]
	} else {
		a.Notes = append(a.Notes, "no search trial completed: there is no best trial")
	}

	a.isolation(complete)
	a.Importance = importance(study.Searched(), complete)
	if len(a.Importance) == 0 && len(complete) > 0 {
		a.Notes = append(a.Notes, "parameter importance not estimated: it needs at least 4 complete trials whose values differ, and a parameter that explains more of them than chance")
	}
	a.finalists()
	a.warn()
	return a, nil
}

// scientificValues lists the values a scientific parameter can take.
func scientificValues(p Parameter) []any {
	if p.Type == TypeCategorical {
		return p.Values
	}
	var out []any
	if p.Type == TypeInt {
		for v := *p.Min; v <= *p.Max; v++ {
			out = append(out, int64(v))
		}
	}
	return out
}

func (a *Analysis) isolation(complete []TrialResult) {
	for _, p := range a.Study.Searched() {
		if p.Role != RoleScientific {
			continue
		}
		for _, v := range scientificValues(p) {
			row := IsolationRow{Parameter: p.Name, Value: v, Label: fmt.Sprint(v)}
			for _, t := range a.Trials {
				if t.Search() && t.State != StateUnfinished && sameValue(t.Params[p.Name], v) {
					row.Trials++
				}
			}
			for _, t := range complete {
				if !sameValue(t.Params[p.Name], v) {
					continue
				}
				row.Complete++
				if row.Best == nil || a.Better(t.Value, row.Best.Value) {
					b := t
					row.Best = &b
				}
				row.BestSoFar = append(row.BestSoFar, BestPoint{Trial: t.Trial, Value: row.Best.Value})
			}
			if row.Complete < minIsolationTrials {
				row.Refusal = fmt.Sprintf("too few trials to compare: %d complete, at least %d needed before this value's nuisance parameters count as tuned", row.Complete, minIsolationTrials)
			}
			a.Isolation = append(a.Isolation, row)
		}
	}
}

// importance is the marginal estimate documented on Analyze.
func importance(params []Parameter, complete []TrialResult) []Importance {
	n := len(complete)
	if n < 4 {
		return nil
	}
	ys := make([]float64, n)
	mean := 0.0
	for i, t := range complete {
		ys[i] = t.Value
		mean += t.Value
	}
	mean /= float64(n)
	sst := 0.0
	for _, y := range ys {
		sst += (y - mean) * (y - mean)
	}
	if sst == 0 || math.IsNaN(sst) || math.IsInf(sst, 0) {
		return nil
	}
	out := make([]Importance, len(params))
	total := 0.0
	for i, p := range params {
		groups, k := groupTrials(p, complete)
		sum := make([]float64, k)
		cnt := make([]float64, k)
		for j, g := range groups {
			sum[g] += ys[j]
			cnt[g]++
		}
		ssb := 0.0
		used := 0
		for g := range sum {
			if cnt[g] > 0 {
				m := sum[g] / cnt[g]
				ssb += cnt[g] * (m - mean) * (m - mean)
				used++
			}
		}
		share := 0.0
		if used > 1 && n > used {
			msw := (sst - ssb) / float64(n-used)
			share = math.Max(0, (ssb-float64(used-1)*msw)/sst)
		}
		out[i] = Importance{Parameter: p.Name, Share: share, Bins: used}
		total += share
	}
	if total == 0 {
		return nil
	}
	for i := range out {
		out[i].Share /= total
	}
	return out
}

// groupTrials assigns each trial a group for p and returns the number of
// groups.
func groupTrials(p Parameter, ts []TrialResult) ([]int, int) {
	groups := make([]int, len(ts))
	if p.Type == TypeCategorical {
		for i, t := range ts {
			for j, v := range p.Values {
				if sameValue(t.Params[p.Name], v) {
					groups[i] = j
				}
			}
		}
		return groups, len(p.Values)
	}
	xs := make([]float64, len(ts))
	distinct := map[float64]int{}
	for i, t := range ts {
		xs[i], _ = number(t.Params[p.Name])
		if _, ok := distinct[xs[i]]; !ok {
			distinct[xs[i]] = len(distinct)
		}
	}
	if p.Type == TypeInt && len(distinct) <= 6 {
		for i, x := range xs {
			groups[i] = distinct[x]
		}
		return groups, len(distinct)
	}
	// Equal-count bins by rank; a tie always lands in the bin of its first
	// occurrence, so that equal values are never split.
	k := min(max(len(ts)/4, 2), 5)
	order := make([]int, len(ts))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(i, j int) int { return cmp.Compare(xs[i], xs[j]) })
	for r, i := range order {
		b := r * k / len(ts)
		if r > 0 && xs[order[r-1]] == xs[i] {
			b = groups[order[r-1]]
		}
		groups[i] = b
	}
	return groups, k
}

func (a *Analysis) finalists() {
	bySearch := map[int]TrialResult{}
	for _, t := range a.Trials {
		if t.Search() {
			bySearch[t.Trial] = t
		}
	}
	idx := map[int]int{}
	for _, t := range a.Trials {
		if t.Search() {
			continue
		}
		k, ok := idx[t.Of]
		if !ok {
			s := bySearch[t.Of]
			k = len(a.Finalists)
			idx[t.Of] = k
			params := s.Params
			if params == nil {
				params = t.Params
			}
			a.Finalists = append(a.Finalists, Finalist{Trial: t.Of, Params: params, SearchValue: s.Value})
		}
		f := &a.Finalists[k]
		f.Replicates++
		if t.State == StateComplete && !math.IsNaN(t.Value) {
			f.Values = append(f.Values, t.Value)
			f.Seeds = append(f.Seeds, t.Seed)
			f.Runs = append(f.Runs, t.Trial)
		}
	}
	for i := range a.Finalists {
		f := &a.Finalists[i]
		f.Mean, f.Std = meanStd(f.Values)
		if len(f.Values) < f.Replicates {
			a.Warnings = append(a.Warnings, fmt.Sprintf("finalist trial %d: %d of its %d replicates did not complete; its mean is over fewer seeds", f.Trial, f.Replicates-len(f.Values), f.Replicates))
		}
	}
	slices.SortStableFunc(a.Finalists, func(x, y Finalist) int {
		switch {
		case a.Better(x.Mean, y.Mean):
			return -1
		case a.Better(y.Mean, x.Mean):
			return 1
		}
		return 0
	})
	if len(a.Finalists) < 2 {
		return
	}
	w, r := a.Finalists[0], a.Finalists[1]
	other := map[int64]float64{}
	for i, s := range r.Seeds {
		other[s] = r.Values[i]
	}
	var diffs []float64
	for i, s := range w.Seeds {
		if v, ok := other[s]; ok {
			diffs = append(diffs, w.Values[i]-v)
		}
	}
	if len(diffs) == 0 {
		a.Notes = append(a.Notes, fmt.Sprintf("finalists %d and %d share no seed: no paired comparison", w.Trial, r.Trial))
		return
	}
	m, s := meanStd(diffs)
	p := &Paired{Winner: w.Trial, RunnerUp: r.Trial, Mean: m, Std: s, N: len(diffs)}
	p.WithinNoise = len(diffs) < 2 || math.Abs(m) < 2*s/math.Sqrt(float64(len(diffs)))
	a.Comparison = p
}

// meanStd returns the mean and the sample standard deviation (NaN for fewer
// than two values; the mean is NaN for none).
func meanStd(xs []float64) (float64, float64) {
	if len(xs) == 0 {
		return math.NaN(), math.NaN()
	}
	m := 0.0
	for _, x := range xs {
		m += x
	}
	m /= float64(len(xs))
	if len(xs) < 2 {
		return m, math.NaN()
	}
	ss := 0.0
	for _, x := range xs {
		ss += (x - m) * (x - m)
	}
	return m, math.Sqrt(ss / float64(len(xs)-1))
}

// unitCoordinate places a numeric parameter's value in [0, 1] of its range,
// on the log scale for a log parameter.
func unitCoordinate(p Parameter, v float64) float64 {
	lo, hi := *p.Min, *p.Max
	if p.Log {
		if v <= 0 {
			return math.NaN()
		}
		return (math.Log(v) - math.Log(lo)) / (math.Log(hi) - math.Log(lo))
	}
	return (v - lo) / (hi - lo)
}

func (a *Analysis) warn() {
	if b := a.Best; b != nil {
		for _, p := range a.Study.Searched() {
			if p.Type != TypeFloat && p.Type != TypeInt {
				continue
			}
			v, ok := number(b.Params[p.Name])
			if !ok {
				continue
			}
			u := unitCoordinate(p, v)
			scale := ""
			if p.Log {
				scale = " on its log scale"
			}
			switch {
			case u <= boundMargin:
				a.Warnings = append(a.Warnings, fmt.Sprintf("best trial %d has %s = %g, within %.0f%% of the lower bound %g%s: the optimum may lie below the range; widen it", b.Trial, p.Name, v, 100*boundMargin, *p.Min, scale))
			case u >= 1-boundMargin:
				a.Warnings = append(a.Warnings, fmt.Sprintf("best trial %d has %s = %g, within %.0f%% of the upper bound %g%s: the optimum may lie above the range; widen it", b.Trial, p.Name, v, 100*boundMargin, *p.Max, scale))
			}
		}
	}
	c := a.Counts
	if done := c.Complete + c.Pruned + c.Failed; done > 0 && float64(c.Failed) > maxFailedShare*float64(done) {
		a.Warnings = append(a.Warnings, fmt.Sprintf("%d of %d finished search trials failed (more than %.0f%%): read their reasons before trusting the search", c.Failed, done, 100*maxFailedShare))
	}
	if c.Unfinished > 0 {
		msg := fmt.Sprintf("%d search trials were asked but never told (interrupted); resume the study to finish them", c.Unfinished)
		if c.Unfinished == 1 {
			msg = "1 search trial was asked but never told (interrupted); resume the study to finish it"
		}
		a.Warnings = append(a.Warnings, msg)
	}
	if p := a.Comparison; p != nil && p.WithinNoise {
		a.Warnings = append(a.Warnings, fmt.Sprintf("finalists %d and %d differ by less than two standard errors over %d shared seeds: the winner is not told apart from seed noise", p.Winner, p.RunnerUp, p.N))
	}
}

// Report is what WriteReport drew.
type Report struct {
	// HTML is the path of the report page.
	HTML  string        `json:"html"`
	Plots []PlotSummary `json:"plots"`
	// Notes say what was not computed or drawn and why: the analysis's
	// notes, then the skipped plots'.
	Notes    []string  `json:"notes,omitempty"`
	Warnings []string  `json:"warnings,omitempty"`
	Analysis *Analysis `json:"-"`
}

// Plot returns the summary of the plot named name, or nil.
func (r *Report) Plot(name string) *PlotSummary {
	for i := range r.Plots {
		if r.Plots[i].Name == name {
			return &r.Plots[i]
		}
	}
	return nil
}

// WriteReport reads DIR/journal.jsonl (and the trials' folders) and writes
// DIR/report.html and DIR/plots/*.png and *.svg. Everything is first written
// into a temporary folder inside DIR, then renamed into place, the plots
// folder before the page: a crash leaves the old report or the new one, not
// a half-written file, and plots of an earlier report that this one no
// longer draws are removed with the old folder.
func WriteReport(dir string) (*Report, error) {
	recs, err := ReadJournal(filepath.Join(dir, "journal.jsonl"))
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	a, err := Analyze(recs)
	if err != nil {
		return nil, fmt.Errorf("report %s: %w", dir, err)
	}
	tmp, err := os.MkdirTemp(dir, ".report-*")
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Mkdir(filepath.Join(tmp, "plots"), 0o755); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	rep := &Report{HTML: filepath.Join(dir, "report.html"), Analysis: a, Warnings: a.Warnings, Notes: slices.Clone(a.Notes)}
	if err := drawPlots(rep, dir, filepath.Join(tmp, "plots")); err != nil {
		return nil, fmt.Errorf("report %s: %w", dir, err)
	}
	page := filepath.Join(tmp, "report.html")
	if err := writePage(page, rep); err != nil {
		return nil, fmt.Errorf("report %s: %w", page, err)
	}

	plots := filepath.Join(dir, "plots")
	old := filepath.Join(tmp, "old-plots")
	if err := os.Rename(plots, old); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("report: move old plots aside: %w", err)
	}
	if err := os.Rename(filepath.Join(tmp, "plots"), plots); err != nil {
		// Put the old plots back, or the deferred cleanup deletes them with
		// the temporary folder while the old page still shows them.
		_ = os.Rename(old, plots)
		return nil, fmt.Errorf("report: %w", err)
	}
	if err := os.Rename(page, rep.HTML); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	return rep, nil
}

// fmtValue prints a metric value; NaN (a failed or unfinished trial) is a
// dash.
func fmtValue(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "—"
	}
	return fmt.Sprintf("%.6g", v)
}

// fmtParams prints parameters in a stable order.
func fmtParams(ps Params, only []Parameter) string {
	var b strings.Builder
	for i, p := range only {
		if i > 0 {
			b.WriteString(", ")
		}
		v, ok := ps[p.Name]
		if !ok {
			fmt.Fprintf(&b, "%s=?", p.Name)
			continue
		}
		if f, isNum := number(v); isNum {
			fmt.Fprintf(&b, "%s=%.4g", p.Name, f)
		} else {
			fmt.Fprintf(&b, "%s=%v", p.Name, v)
		}
	}
	return b.String()
}

type pageData struct {
	*Report
	A        *Analysis
	Searched []Parameter
	Fixed    []Parameter
}

// Fmt prints a trial's searched parameters.
func (d pageData) Fmt(ps Params) string { return fmtParams(ps, d.Searched) }

var pageFuncs = template.FuncMap{
	"value": fmtValue,
	"pm": func(m, s float64) string {
		if math.IsNaN(s) {
			return fmtValue(m)
		}
		return fmtValue(m) + " ± " + fmtValue(s)
	},
	"bounds": func(p Parameter) string {
		switch p.Type {
		case TypeCategorical:
			parts := make([]string, len(p.Values))
			for i, v := range p.Values {
				parts[i] = fmt.Sprint(v)
			}
			return "{" + strings.Join(parts, ", ") + "}"
		case TypeFloat, TypeInt:
			s := fmt.Sprintf("[%g, %g]", *p.Min, *p.Max)
			if p.Log {
				s += " log"
			}
			return s
		}
		return ""
	},
	"any": func(v any) string { return fmt.Sprint(v) },
}

var pageTmpl = template.Must(template.New("report").Funcs(pageFuncs).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Study {{.A.Study.Name}}</title>
<style>
body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;font-size:90%}
th{background:#f0f0f0}.warn{background:#fff3cd;border-left:4px solid #e0a800;padding:4px 8px;margin:4px 0}
.note{color:#555;font-style:italic}.failed{color:#a00}.pruned{color:#777}img{max-width:100%}
figure{margin:1em 0}figcaption{font-size:90%;color:#444}
</style></head><body>
<h1>Study {{.A.Study.Name}}</h1>
<p>Objective: <b>{{.A.Study.Objective.Direction}}</b> <code>{{.A.Study.Objective.Metric}}</code>.
Search trials: {{.A.Counts.Trials}} ({{.A.Counts.Complete}} complete, {{.A.Counts.Pruned}} pruned, {{.A.Counts.Failed}} failed{{if .A.Counts.Unfinished}}, {{.A.Counts.Unfinished}} unfinished{{end}}).</p>

{{if .Warnings}}<h2>Warnings</h2>{{range .Warnings}}<div class="warn">{{.}}</div>{{end}}{{end}}

<h2>Parameters</h2>
<table><tr><th>name</th><th>role</th><th>type</th><th>range or values</th></tr>
{{range .Searched}}<tr><td>{{.Name}}</td><td>{{.Role}}</td><td>{{.Type}}</td><td>{{bounds .}}</td></tr>
{{end}}{{range .Fixed}}<tr><td>{{.Name}}</td><td>{{.Role}}</td><td></td><td>{{any .Value}}</td></tr>
{{end}}</table>
{{if .Fixed}}<p>Caveats: every conclusion holds only with {{range $i, $p := .Fixed}}{{if $i}}, {{end}}<code>{{$p.Name}}</code> held at {{any $p.Value}}{{end}}.</p>{{end}}

<h2>Best trial</h2>
{{with .A.Best}}<p>Trial <b>{{.Trial}}</b> ({{.Phase}}, seed {{.Seed}}): {{$.A.Study.Objective.Metric}} = <b>{{value .Value}}</b> with {{$.Fmt .Params}}.</p>
{{else}}<p class="note">No search trial completed.</p>{{end}}

{{if .A.Isolation}}<h2>Isolation of the scientific parameters</h2>
<p>For each value of a scientific parameter, the best value reached with the nuisance parameters tuned for that value.</p>
<table><tr><th>parameter</th><th>value</th><th>trials</th><th>complete</th><th>best</th><th>best trial's parameters</th><th>note</th></tr>
{{range .A.Isolation}}<tr><td>{{.Parameter}}</td><td>{{.Label}}</td><td>{{.Trials}}</td><td>{{.Complete}}</td>
<td>{{with .Best}}{{value .Value}} (trial {{.Trial}}){{else}}—{{end}}</td><td>{{with .Best}}{{$.Fmt .Params}}{{end}}</td><td>{{.Refusal}}</td></tr>
{{end}}</table>{{end}}

{{if .A.Finalists}}<h2>Finalists</h2>
<table><tr><th>trial</th><th>search value</th><th>replicates (mean ± std)</th><th>complete / asked</th><th>values</th><th>parameters</th></tr>
{{range .A.Finalists}}<tr><td>{{.Trial}}</td><td>{{value .SearchValue}}</td><td>{{pm .Mean .Std}}</td><td>{{len .Values}} / {{.Replicates}}</td><td>{{range $i, $v := .Values}}{{if $i}}, {{end}}{{value $v}}{{end}}</td><td>{{$.Fmt .Params}}</td></tr>
{{end}}</table>
{{with .A.Comparison}}<p>Paired comparison on the same seeds: trial {{.Winner}} − trial {{.RunnerUp}} = {{pm .Mean .Std}} over {{.N}} seeds ({{if eq $.A.Study.Objective.Direction "minimize"}}negative{{else}}positive{{end}} favours trial {{.Winner}}){{if .WithinNoise}}: within seed noise, the two are not told apart{{end}}.</p>{{end}}{{end}}

{{if .Notes}}<h2>Notes</h2>{{range .Notes}}<p class="note">{{.}}</p>{{end}}{{end}}

<h2>Plots</h2>
{{range .Plots}}<figure><a href="plots/{{.Name}}.svg"><img src="plots/{{.Name}}.png" alt="{{.Title}}"></a>
<figcaption><b>{{.Title}}.</b> {{.Caption}} (<a href="plots/{{.Name}}.svg">SVG</a>)</figcaption></figure>
{{end}}

<h2>All trials</h2>
<table><tr><th>trial</th><th>phase</th><th>state</th><th>{{.A.Study.Objective.Metric}}</th><th>parameters</th><th>reason</th></tr>
{{range .A.Trials}}<tr class="{{.State}}"><td>{{.Trial}}</td><td>{{.Phase}}{{if .Of}} of {{.Of}}{{end}}</td><td>{{.State}}</td><td>{{value .Value}}</td><td>{{$.Fmt .Params}}</td><td>{{.Reason}}</td></tr>
{{end}}</table>
</body></html>
`))

func writePage(path string, rep *Report) error {
	a := rep.Analysis
	d := pageData{Report: rep, A: a, Searched: a.Study.Searched()}
	for _, p := range a.Study.Parameters {
		if !p.Searched() {
			d.Fixed = append(d.Fixed, p)
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pageTmpl.Execute(f, d); err != nil {
		f.Close()
		return fmt.Errorf("render: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
