package tuning

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// Roles of a parameter, as the seed article names them.
const (
	RoleScientific = "scientific"
	RoleNuisance   = "nuisance"
	RoleFixed      = "fixed"
)

// Types of a searched parameter.
const (
	TypeFloat       = "float"
	TypeInt         = "int"
	TypeCategorical = "categorical"
)

// Pruning methods.
const (
	PruneNone      = "none"
	PruneASHA      = "asha"
	PruneHyperband = "hyperband"
)

// BuiltinHead names the built-in trainer of the classifier head on cached
// backbone features.
const BuiltinHead = "head"

// maxScientificValues bounds how many values a scientific parameter may
// take: each value gets its own nuisance search, so a budget spread over
// more values than this leaves every one of them under-tuned.
const maxScientificValues = 16

// ErrInvalidStudy is wrapped by every validation error of a study file.
var ErrInvalidStudy = errors.New("invalid study")

// Study is one study file: the question, the parameters, the budget.
type Study struct {
	Name       string      `yaml:"name" json:"name,omitempty"`
	Objective  Objective   `yaml:"objective" json:"objective,omitempty"`
	Parameters []Parameter `yaml:"parameters" json:"parameters,omitempty"`
	Budget     Budget      `yaml:"budget" json:"budget,omitempty"`
	Pruning    Pruning     `yaml:"pruning" json:"pruning,omitempty"`
	Replicates Replicates  `yaml:"replicates" json:"replicates,omitempty"`
	Seed       int64       `yaml:"seed" json:"seed,omitempty"`
}

// Objective says what a trial runs and which of its reported metrics is the
// result.
type Objective struct {
	// Command runs once per trial (the trial protocol in the package doc);
	// exactly one of Command and Builtin is set.
	Command []string `yaml:"command" json:"command,omitempty"`
	Builtin string   `yaml:"builtin" json:"builtin,omitempty"`
	// Features is the cached-features file the built-in head trains on
	// (written by `scopewatch tune features`); a relative path is relative
	// to the study file. Only for builtin: head.
	Features string `yaml:"features" json:"features,omitempty"`
	// Metric is the key read from the trial's JSON lines; the last line's
	// value is the trial's result.
	Metric string `yaml:"metric" json:"metric,omitempty"`
	// Direction is minimize or maximize; there is no default, because
	// guessing it wrong silently picks the worst trial.
	Direction string `yaml:"direction" json:"direction,omitempty"`
}

// Parameter is one named parameter of a study.
type Parameter struct {
	Name string `yaml:"name" json:"name,omitempty"`
	Role string `yaml:"role" json:"role,omitempty"`
	Type string `yaml:"type" json:"type,omitempty"`
	// Min and Max bound float and int parameters (inclusive).
	Min *float64 `yaml:"min" json:"min,omitempty"`
	Max *float64 `yaml:"max" json:"max,omitempty"`
	// Log searches the range on a log scale (min > 0).
	Log bool `yaml:"log" json:"log,omitempty"`
	// Values are the choices of a categorical parameter (scalars).
	Values []any `yaml:"values" json:"values,omitempty"`
	// Value is a fixed parameter's value.
	Value any `yaml:"value" json:"value,omitempty"`
}

// Searched reports whether the study searches the parameter.
func (p Parameter) Searched() bool { return p.Role != RoleFixed }

// Budget bounds the study.
type Budget struct {
	// Trials is the number of search trials (replicates of finalists come on
	// top of it).
	Trials int `yaml:"trials" json:"trials,omitempty"`
	// Explore is how many of them are quasi-random exploration before the
	// Bayesian exploitation starts; 0 means the default (see Defaults).
	Explore int `yaml:"explore" json:"explore,omitempty"`
	// Parallel is how many trials run at once; it never changes which
	// parameters are suggested.
	Parallel  int `yaml:"parallel" json:"parallel,omitempty"`
	MaxEpochs int `yaml:"max_epochs" json:"max_epochs,omitempty"`
	// Overlap is how many exploitation trials may run at once: suggestion n
	// is conditioned on the outcomes of trials 1..n-Overlap and on the
	// parameters (not yet the outcomes) of the Overlap-1 trials just before
	// it. It is part of the study, unlike Parallel, so that the suggestions
	// are the same whatever Parallel is; Parallel above Overlap leaves slots
	// idle once exploitation starts. Pruning decisions are made against the
	// same trials. Default 2.
	Overlap int `yaml:"overlap" json:"overlap,omitempty"`
}

// Pruning stops unpromising trials early, with epochs as the resource.
type Pruning struct {
	Method      string `yaml:"method" json:"method,omitempty"`
	GraceEpochs int    `yaml:"grace_epochs" json:"grace_epochs,omitempty"`
	Reduction   int    `yaml:"reduction" json:"reduction,omitempty"`
}

// Replicates reruns the best trials with other seeds, so that the winner is
// told apart from seed noise.
type Replicates struct {
	Finalists int `yaml:"finalists" json:"finalists,omitempty"`
	Seeds     int `yaml:"seeds" json:"seeds,omitempty"`
}

var (
	studyNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	paramNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]{0,63}$`)
	metricRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]{0,63}$`)
)

// Load reads and validates a study file.
func Load(path string) (*Study, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("study: %w", err)
	}
	s, err := Decode(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("study %s: %w", path, err)
	}
	// A study file travels with its features: a relative path means beside
	// the study file, wherever the command is run from.
	if f := s.Objective.Features; f != "" && !filepath.IsAbs(f) {
		s.Objective.Features = filepath.Join(filepath.Dir(path), f)
	}
	// So does a trial program named by a relative path ("./trial.py"),
	// which would otherwise be looked up in each trial's own folder, where
	// the command runs. A bare name is left to PATH.
	if c := s.Objective.Command; len(c) > 0 && strings.ContainsRune(c[0], '/') && !filepath.IsAbs(c[0]) {
		abs, err := filepath.Abs(filepath.Join(filepath.Dir(path), c[0]))
		if err != nil {
			return nil, fmt.Errorf("study %s: objective.command[0]: %w", path, err)
		}
		s.Objective.Command = append([]string{abs}, c[1:]...)
	}
	return s, nil
}

// Decode decodes a study strictly (an unknown key is an error), applies the
// defaults and validates it. Errors wrap ErrInvalidStudy and name the field.
func Decode(r io.Reader) (*Study, error) {
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	var s Study
	if err := dec.Decode(&s); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: the file is empty", ErrInvalidStudy)
		}
		return nil, fmt.Errorf("%w: %v", ErrInvalidStudy, err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: more than one YAML document; a study file holds one", ErrInvalidStudy)
	}
	s.applyDefaults()
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// applyDefaults fills what the file may leave out.
func (s *Study) applyDefaults() {
	if s.Budget.Parallel == 0 {
		s.Budget.Parallel = 1
	}
	if s.Budget.Overlap == 0 {
		s.Budget.Overlap = 2
	}
	if s.Budget.MaxEpochs == 0 {
		s.Budget.MaxEpochs = 1
	}
	if s.Budget.Explore == 0 {
		// Enough quasi-random points that a length scale per dimension
		// can be fitted, but never the whole budget.
		n := 0
		for _, p := range s.Parameters {
			if p.Searched() {
				n++
			}
		}
		s.Budget.Explore = min(max(2*n+2, 5), s.Budget.Trials)
	}
	if s.Pruning.Method == "" {
		s.Pruning.Method = PruneNone
	}
	if s.Pruning.GraceEpochs == 0 {
		s.Pruning.GraceEpochs = 1
	}
	if s.Pruning.Reduction == 0 {
		s.Pruning.Reduction = 3
	}
}

// Validate checks the whole study and returns the first problem found, naming
// the field and what is accepted.
func (s *Study) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrInvalidStudy, field, fmt.Sprintf(format, args...))
	}
	if !studyNameRE.MatchString(s.Name) {
		return bad("name", "%q must be 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit", s.Name)
	}
	o := s.Objective
	switch {
	case len(o.Command) == 0 && o.Builtin == "":
		return bad("objective", "set command (a list: program and arguments) or builtin (%q)", BuiltinHead)
	case len(o.Command) > 0 && o.Builtin != "":
		return bad("objective", "command and builtin are both set; a study has one objective")
	case o.Builtin != "" && o.Builtin != BuiltinHead:
		return bad("objective.builtin", "%q is not a built-in trainer; accepted: %q", o.Builtin, BuiltinHead)
	case o.Features != "" && o.Builtin != BuiltinHead:
		return bad("objective.features", "only the built-in head trains on cached features; a command reads its own data")
	}
	if len(o.Command) > 0 && strings.TrimSpace(o.Command[0]) == "" {
		return bad("objective.command[0]", "the program is empty")
	}
	if !metricRE.MatchString(o.Metric) {
		return bad("objective.metric", "%q must be a JSON key of the trial's lines, such as val_loss or value", o.Metric)
	}
	if o.Direction != "minimize" && o.Direction != "maximize" {
		return bad("objective.direction", "%q: accepted values are minimize and maximize", o.Direction)
	}

	if len(s.Parameters) == 0 {
		return bad("parameters", "a study needs at least one parameter")
	}
	seen := map[string]bool{}
	searched := 0
	for i, p := range s.Parameters {
		field := fmt.Sprintf("parameters[%d]", i)
		if !paramNameRE.MatchString(p.Name) {
			return bad(field+".name", "%q must be an identifier (letters, digits, '_', '.')", p.Name)
		}
		field = fmt.Sprintf("parameters[%d] (%s)", i, p.Name)
		if seen[p.Name] {
			return bad(field+".name", "the name appears twice")
		}
		seen[p.Name] = true
		if err := validateParameter(p, func(sub, format string, args ...any) error {
			return bad(field+"."+sub, format, args...)
		}); err != nil {
			return err
		}
		if p.Searched() {
			searched++
		}
	}
	if searched == 0 {
		return bad("parameters", "every parameter is fixed; a study needs at least one scientific or nuisance parameter")
	}

	b := s.Budget
	switch {
	case b.Trials < 1 || b.Trials > 100000:
		return bad("budget.trials", "%d: accepted 1..100000", b.Trials)
	case b.Explore < 1 || b.Explore > b.Trials:
		return bad("budget.explore", "%d: accepted 1..budget.trials (%d)", b.Explore, b.Trials)
	case b.Parallel < 1 || b.Parallel > 64:
		return bad("budget.parallel", "%d: accepted 1..64", b.Parallel)
	case b.Overlap < 1 || b.Overlap > 64:
		return bad("budget.overlap", "%d: accepted 1..64", b.Overlap)
	case b.MaxEpochs < 1 || b.MaxEpochs > 100000:
		return bad("budget.max_epochs", "%d: accepted 1..100000", b.MaxEpochs)
	}

	pr := s.Pruning
	switch pr.Method {
	case PruneNone, PruneASHA, PruneHyperband:
	default:
		return bad("pruning.method", "%q: accepted values are none, asha and hyperband", pr.Method)
	}
	if pr.Method != PruneNone {
		if pr.GraceEpochs < 1 || pr.GraceEpochs >= b.MaxEpochs {
			return bad("pruning.grace_epochs", "%d: accepted 1..budget.max_epochs-1 (%d); pruning needs a trial to run past its grace period", pr.GraceEpochs, b.MaxEpochs-1)
		}
		if pr.Reduction < 2 || pr.Reduction > 16 {
			return bad("pruning.reduction", "%d: accepted 2..16", pr.Reduction)
		}
	}

	r := s.Replicates
	switch {
	case r.Finalists < 0 || r.Finalists > b.Trials:
		return bad("replicates.finalists", "%d: accepted 0..budget.trials (%d)", r.Finalists, b.Trials)
	case r.Seeds < 0 || r.Seeds > 100:
		return bad("replicates.seeds", "%d: accepted 0..100", r.Seeds)
	case r.Finalists > 0 && r.Seeds < 2:
		return bad("replicates.seeds", "%d: a mean ± standard deviation over finalists needs at least 2 seeds", r.Seeds)
	}
	return nil
}

func validateParameter(p Parameter, bad func(sub, format string, args ...any) error) error {
	switch p.Role {
	case RoleFixed:
		if p.Value == nil {
			return bad("value", "a fixed parameter needs a value (it is recorded as a caveat of the study)")
		}
		if p.Type != "" || p.Min != nil || p.Max != nil || p.Log || len(p.Values) > 0 {
			return bad("role", "a fixed parameter takes only name, role and value; to search it, make it nuisance")
		}
		return nil
	case RoleScientific, RoleNuisance:
	default:
		return bad("role", "%q: accepted values are scientific, nuisance and fixed", p.Role)
	}
	if p.Value != nil {
		return bad("value", "only a fixed parameter has a value; a searched one has a range or values")
	}
	if strings.EqualFold(p.Name, "batch_size") {
		return bad("role", "batch_size is not searched: fix it once per dataset by throughput (role: fixed), because a tuned batch size confounds every other comparison and is not a way to a better model")
	}
	switch p.Type {
	case TypeFloat, TypeInt:
		if len(p.Values) > 0 {
			return bad("values", "values belong to a categorical parameter; a %s one has min and max", p.Type)
		}
		if p.Min == nil || p.Max == nil {
			return bad("min", "a %s parameter needs both min and max", p.Type)
		}
		lo, hi := *p.Min, *p.Max
		if math.IsNaN(lo) || math.IsInf(lo, 0) || math.IsNaN(hi) || math.IsInf(hi, 0) {
			return bad("min", "min and max must be finite numbers")
		}
		if lo >= hi {
			return bad("min", "min (%g) must be below max (%g); a parameter with one value is fixed", lo, hi)
		}
		if p.Log && lo <= 0 {
			return bad("min", "%g: a log-scale range needs min > 0", lo)
		}
		if p.Type == TypeInt {
			if lo != math.Trunc(lo) || hi != math.Trunc(hi) {
				return bad("min", "an int parameter needs whole-number bounds (got %g, %g)", lo, hi)
			}
			if math.Abs(lo) > 1<<40 || math.Abs(hi) > 1<<40 {
				return bad("max", "int bounds beyond ±2^40 are not supported")
			}
			if p.Role == RoleScientific && hi-lo+1 > maxScientificValues {
				return bad("max", "a scientific int takes at most %d values (got %g); each value gets its own nuisance search", maxScientificValues, hi-lo+1)
			}
		}
		if p.Type == TypeFloat && p.Role == RoleScientific {
			return bad("type", "a scientific parameter must be categorical or int: its values are compared one by one, each with its own nuisance search")
		}
	case TypeCategorical:
		if p.Min != nil || p.Max != nil || p.Log {
			return bad("min", "min, max and log belong to float and int parameters; a categorical one has values")
		}
		if len(p.Values) < 2 {
			return bad("values", "a categorical parameter needs at least 2 values; one value is a fixed parameter")
		}
		if p.Role == RoleScientific && len(p.Values) > maxScientificValues {
			return bad("values", "a scientific parameter takes at most %d values (got %d)", maxScientificValues, len(p.Values))
		}
		seen := map[string]bool{}
		for j, v := range p.Values {
			switch v.(type) {
			case string, int, int64, uint64, float64, bool:
			default:
				return bad(fmt.Sprintf("values[%d]", j), "%v is not a scalar (string, number or boolean)", v)
			}
			k := fmt.Sprintf("%T:%v", v, v)
			if seen[k] {
				return bad(fmt.Sprintf("values[%d]", j), "%v appears twice", v)
			}
			seen[k] = true
		}
	case "":
		return bad("type", "a searched parameter needs a type: float, int or categorical")
	default:
		return bad("type", "%q: accepted values are float, int and categorical", p.Type)
	}
	return nil
}

// Better reports whether metric value x beats y in the objective's
// direction; NaN (no value) never beats anything.
func (s *Study) Better(x, y float64) bool {
	if math.IsNaN(x) {
		return false
	}
	if math.IsNaN(y) {
		return true
	}
	if s.Objective.Direction == "maximize" {
		return x > y
	}
	return x < y
}

// Searched returns the parameters the study searches, in file order.
func (s *Study) Searched() []Parameter {
	var out []Parameter
	for _, p := range s.Parameters {
		if p.Searched() {
			out = append(out, p)
		}
	}
	return out
}

// Fixed returns the fixed parameters' values: the study's caveats.
func (s *Study) Fixed() map[string]any {
	out := map[string]any{}
	for _, p := range s.Parameters {
		if !p.Searched() {
			out[p.Name] = p.Value
		}
	}
	return out
}
