package tuning

import "math"

// pruner is successive halving with epochs as the resource: at each rung
// (grace·η^k epochs) a trial goes on only if it is in the best 1/η of the
// trials that reached that rung before it. With Hyperband the trials are
// dealt round-robin into brackets whose first rung is later and later (the
// last bracket is never pruned), so that a slow starter has a bracket in
// which it is judged late.
//
// Unlike the asynchronous halving of the ASHA paper, the trials a decision
// is made against are fixed by trial number, not by timing: trial n is
// compared with trials 1..n-Overlap only (the Runner waits for them), the
// same trials its suggestion was conditioned on. Decisions, and so the whole
// study, are then the same whatever Parallel is and across a resume. Until η
// earlier trials have reached a rung, nobody is stopped there: one or two
// values are no evidence.
type pruner struct {
	method    string
	grace     int
	eta       int
	maxEpochs int
}

func newPruner(s *Study) pruner {
	return pruner{method: s.Pruning.Method, grace: s.Pruning.GraceEpochs, eta: s.Pruning.Reduction, maxEpochs: s.Budget.MaxEpochs}
}

// brackets is the number of Hyperband brackets: one per rung a trial can
// first be judged at, plus the one that is never pruned. ASHA has one.
func (p pruner) brackets() int {
	if p.method != PruneHyperband {
		return 1
	}
	n := 1
	for r := p.grace; r < p.maxEpochs; r *= p.eta {
		n++
	}
	return n
}

// bracket is the bracket of search trial n (1-based).
func (p pruner) bracket(n int) int { return (n - 1) % p.brackets() }

// isRung reports whether a trial of bracket b is judged after epoch e. The
// last epoch is never a rung: a trial that reached it is complete.
func (p pruner) isRung(b, e int) bool {
	if p.method == PruneNone || e >= p.maxEpochs {
		return false
	}
	if p.method == PruneHyperband && b == p.brackets()-1 {
		return false
	}
	r := p.grace
	for range b {
		r *= p.eta
	}
	for ; r < p.maxEpochs; r *= p.eta {
		if r == e {
			return true
		}
		if r > e {
			return false
		}
	}
	return false
}

// keep decides at a rung: v and peers are oriented so that lower is
// better; peers are the earlier trials' values at the same rung.
func (p pruner) keep(v float64, peers []float64) bool {
	m := len(peers) + 1
	if m < p.eta || math.IsNaN(v) {
		return m < p.eta
	}
	better := 0
	for _, q := range peers {
		if q < v {
			better++
		}
	}
	return better < m/p.eta
}

// valueAt is the metric a trial reported for epoch e, as RunCommand numbers
// epochs: by the line's "epoch" key, else by its position.
func valueAt(o Outcome, metric string, e int) (float64, bool) {
	for i, ep := range o.Epochs {
		k := i + 1
		if x, ok := ep["epoch"]; ok {
			k = int(x)
		}
		if k != e {
			continue
		}
		v, ok := ep[metric]
		if ok && !math.IsNaN(v) {
			return v, true
		}
	}
	return 0, false
}
