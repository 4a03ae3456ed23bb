package tuning

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// Params are one trial's parameter values by name: float64 for float
// parameters, int64 for int ones, the chosen value (as written in the study
// file) for categorical ones, and the value of every fixed parameter.
type Params map[string]any

// String formats the parameters as sorted name=value pairs, floats to 4
// significant digits, for summaries and model cards.
func (p Params) String() string {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		if f, ok := p[k].(float64); ok {
			parts[i] = fmt.Sprintf("%s=%.4g", k, f)
		} else {
			parts[i] = fmt.Sprintf("%s=%v", k, p[k])
		}
	}
	return strings.Join(parts, " ")
}

// Space maps a study's searched parameters to and from the unit cube, where
// exploration and the Bayesian search work. Each searched parameter is one
// coordinate in [0,1): log parameters are uniform in log space, and every int
// or categorical value owns an equal share of its coordinate, so that
// quasi-random points spread evenly over the values a parameter can take
// instead of favouring the interior ones, as rounding a continuous value
// would.
type Space struct {
	params []Parameter
	fixed  map[string]any
}

// NewSpace returns the space of a validated study.
func NewSpace(s *Study) *Space {
	return &Space{params: s.Searched(), fixed: s.Fixed()}
}

// Dim is the number of searched parameters.
func (sp *Space) Dim() int { return len(sp.params) }

// Parameters returns the searched parameters in coordinate order.
func (sp *Space) Parameters() []Parameter { return sp.params }

// Params turns a point of the unit cube into parameter values, fixed ones
// included.
func (sp *Space) Params(u []float64) Params {
	if len(u) != len(sp.params) {
		panic(fmt.Sprintf("tuning: point of dimension %d in a space of %d", len(u), len(sp.params)))
	}
	out := make(Params, len(sp.params)+len(sp.fixed))
	for k, v := range sp.fixed {
		out[k] = v
	}
	for i, p := range sp.params {
		x := math.Min(math.Max(u[i], 0), math.Nextafter(1, 0))
		switch p.Type {
		case TypeFloat:
			lo, hi := *p.Min, *p.Max
			if p.Log {
				out[p.Name] = math.Min(hi, math.Max(lo, math.Exp(math.Log(lo)+x*(math.Log(hi)-math.Log(lo)))))
			} else {
				out[p.Name] = lo + x*(hi-lo)
			}
		case TypeInt:
			out[p.Name] = intValue(p, x)
		case TypeCategorical:
			out[p.Name] = p.Values[min(int(x*float64(len(p.Values))), len(p.Values)-1)]
		}
	}
	return out
}

// intValue gives an int parameter's value for coordinate x: bins of equal
// width on the linear scale, or on the log scale with each integer k owning
// [k-1/2, k+1/2).
func intValue(p Parameter, x float64) int64 {
	lo, hi := *p.Min, *p.Max
	var v float64
	if p.Log {
		a, b := math.Log(lo-0.5), math.Log(hi+0.5)
		v = math.Round(math.Exp(a + x*(b-a)))
	} else {
		v = lo + math.Floor(x*(hi-lo+1))
	}
	return int64(math.Min(hi, math.Max(lo, v)))
}

// Point turns parameter values back into the unit cube: the exact coordinate
// for a float, the centre of its value's share for an int or categorical
// parameter. It is the inverse of Params up to that snapping.
func (sp *Space) Point(ps Params) ([]float64, error) {
	u := make([]float64, len(sp.params))
	for i, p := range sp.params {
		v, ok := ps[p.Name]
		if !ok {
			return nil, fmt.Errorf("tuning: parameter %s is missing", p.Name)
		}
		switch p.Type {
		case TypeFloat:
			f, ok := number(v)
			if !ok {
				return nil, fmt.Errorf("tuning: parameter %s: %v is not a number", p.Name, v)
			}
			lo, hi := *p.Min, *p.Max
			if p.Log {
				if f <= 0 {
					return nil, fmt.Errorf("tuning: parameter %s: %v is not positive", p.Name, v)
				}
				u[i] = (math.Log(f) - math.Log(lo)) / (math.Log(hi) - math.Log(lo))
			} else {
				u[i] = (f - lo) / (hi - lo)
			}
		case TypeInt:
			f, ok := number(v)
			if !ok || f != math.Trunc(f) {
				return nil, fmt.Errorf("tuning: parameter %s: %v is not an integer", p.Name, v)
			}
			lo, hi := *p.Min, *p.Max
			if p.Log {
				a, b := math.Log(lo-0.5), math.Log(hi+0.5)
				// The centre of k's share in log space.
				u[i] = ((math.Log(f-0.5)+math.Log(f+0.5))/2 - a) / (b - a)
			} else {
				u[i] = (f - lo + 0.5) / (hi - lo + 1)
			}
		case TypeCategorical:
			j := -1
			for k, c := range p.Values {
				if sameValue(c, v) {
					j = k
					break
				}
			}
			if j < 0 {
				return nil, fmt.Errorf("tuning: parameter %s: %v is not one of %v", p.Name, v, p.Values)
			}
			u[i] = (float64(j) + 0.5) / float64(len(p.Values))
		}
		if u[i] < 0 || u[i] > 1 || math.IsNaN(u[i]) {
			return nil, fmt.Errorf("tuning: parameter %s: %v is outside [%v, %v]", p.Name, v, *p.Min, *p.Max)
		}
	}
	return u, nil
}

// number reads a JSON or YAML number of any Go numeric type.
func number(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case int:
		return float64(x), true
	case int64:
		return float64(x), true
	case uint64:
		return float64(x), true
	}
	return 0, false
}

// sameValue compares categorical values across the types YAML and JSON give
// them (a 32 in the study file is an int, in a journal line a float64).
func sameValue(a, b any) bool {
	fa, oka := number(a)
	fb, okb := number(b)
	if oka && okb {
		return fa == fb
	}
	return a == b
}
