package tuning

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
)

// A retune works on a snapshot: the labelled samples it was given, fixed by
// content so that the same data always gives the same splits and the same
// sealed test, and so that a changed input is noticed. The snapshot's hash
// is over each sample's content hash with its label, slide, device and
// domain, sorted: renaming or reordering files keeps the snapshot, a
// relabelled or added sample makes a new one.

// Split names.
const (
	SplitTrain = "train"
	SplitVal   = "val"
	SplitTest  = "test"
)

// ErrSnapshot is wrapped by every error about a snapshot that cannot be
// retuned on (too few samples, slides or classes; conflicting labels).
var ErrSnapshot = errors.New("snapshot")

// Sample is one labelled image of a snapshot.
type Sample struct {
	Path   string // where it was read; not part of the snapshot's identity
	SHA256 string // hex of the file's content
	Label  int    // class index
	Slide  string // slide id (or the device's keyed slide hash)
	Device string // "" when unknown
	// Domain names the data's origin, for example "nominal" for the
	// incumbent's own domain and "feedback" for the new labels: the splits
	// are made per domain so that each is trained, validated and tested.
	Domain string
	Split  string // set by NewSnapshot
}

// Snapshot is a content-addressed set of samples with its splits.
type Snapshot struct {
	Hash    string   // hex sha256, see above
	Samples []Sample // sorted by content hash
	// Grouping says how the splits were made per domain: "slide" or
	// "device" (when a domain's samples come from at least 3 devices, so
	// that a test device is one the model never trained on).
	Grouping map[string]string
	// Duplicates counts files left out because the same content was
	// listed before with the same label (a re-export, a copied folder).
	Duplicates int
}

// SnapshotOptions are the split fractions and the floors below which a
// snapshot is refused.
type SnapshotOptions struct {
	TestFraction float64 // of each domain's samples; default 0.25
	ValFraction  float64 // default 0.2
	MinSamples   int     // default 200
	Classes      int     // number of classes; every one must be present
}

func (o SnapshotOptions) withDefaults() SnapshotOptions {
	if o.TestFraction == 0 {
		o.TestFraction = 0.25
	}
	if o.ValFraction == 0 {
		o.ValFraction = 0.2
	}
	if o.MinSamples == 0 {
		o.MinSamples = 200
	}
	if o.Classes == 0 {
		o.Classes = 2
	}
	return o
}

// NewSnapshot checks the samples, drops exact duplicates, hashes the rest
// and splits each domain into train, validation and test by whole slides
// (or devices). The assignment depends on the snapshot's content only.
//
// Refused, wrapping ErrSnapshot with the reason: fewer than MinSamples
// samples; a class with no sample; the same content with two labels; a
// domain with fewer than 3 slides (it could not be tested on slides the
// model never saw).
func NewSnapshot(samples []Sample, opts SnapshotOptions) (*Snapshot, error) {
	opts = opts.withDefaults()
	if !(opts.TestFraction > 0 && opts.ValFraction > 0 && opts.TestFraction+opts.ValFraction < 1) {
		return nil, fmt.Errorf("%w: split fractions test %v, validation %v: want both > 0 and a sum below 1", ErrSnapshot, opts.TestFraction, opts.ValFraction)
	}
	byHash := map[string]int{}
	s := &Snapshot{Grouping: map[string]string{}}
	for _, x := range samples {
		if len(x.SHA256) != 64 {
			return nil, fmt.Errorf("%w: %s: content hash %q is not a hex sha256", ErrSnapshot, x.Path, x.SHA256)
		}
		if x.Label < 0 || x.Label >= opts.Classes {
			return nil, fmt.Errorf("%w: %s: label %d: want 0..%d", ErrSnapshot, x.Path, x.Label, opts.Classes-1)
		}
		if x.Slide == "" {
			return nil, fmt.Errorf("%w: %s has no slide id; the splits keep a slide's cells together", ErrSnapshot, x.Path)
		}
		if i, ok := byHash[x.SHA256]; ok {
			prev := s.Samples[i]
			if prev.Label != x.Label {
				return nil, fmt.Errorf("%w: %s and %s are the same image labelled %d and %d; resolve the label first", ErrSnapshot, prev.Path, x.Path, prev.Label, x.Label)
			}
			s.Duplicates++
			continue
		}
		byHash[x.SHA256] = len(s.Samples)
		x.Split = ""
		s.Samples = append(s.Samples, x)
	}
	if len(s.Samples) < opts.MinSamples {
		return nil, fmt.Errorf("%w: %d labelled images, the floor is %d", ErrSnapshot, len(s.Samples), opts.MinSamples)
	}
	perClass := make([]int, opts.Classes)
	for _, x := range s.Samples {
		perClass[x.Label]++
	}
	for c, n := range perClass {
		if n == 0 {
			return nil, fmt.Errorf("%w: no image of class %d among %d; a classifier cannot be trained or tested on one class", ErrSnapshot, c, len(s.Samples))
		}
	}
	slices.SortFunc(s.Samples, func(a, b Sample) int { return cmp.Compare(a.SHA256, b.SHA256) })
	h := sha256.New()
	for _, x := range s.Samples {
		fmt.Fprintf(h, "%s\t%d\t%s\t%s\t%s\n", x.SHA256, x.Label, x.Slide, x.Device, x.Domain)
	}
	s.Hash = hex.EncodeToString(h.Sum(nil))

	domains := map[string][]int{}
	for i, x := range s.Samples {
		domains[x.Domain] = append(domains[x.Domain], i)
	}
	names := make([]string, 0, len(domains))
	for d := range domains {
		names = append(names, d)
	}
	slices.Sort(names)
	seed := HashSeed(s.Hash)
	for _, d := range names {
		if err := s.splitDomain(d, domains[d], opts, seed); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// splitDomain assigns whole groups (slides, or devices when there are at
// least 3) of one domain: shuffled by the snapshot's seed, the first go to
// test until it holds TestFraction of the domain's samples, the next to
// validation, the rest train; each split gets at least one group.
func (s *Snapshot) splitDomain(domain string, rows []int, opts SnapshotOptions, seed uint64) error {
	devices := map[string]bool{}
	for _, i := range rows {
		if d := s.Samples[i].Device; d != "" {
			devices[d] = true
		}
	}
	grouping := "slide"
	key := func(x Sample) string { return x.Device + "\x00" + x.Slide }
	if len(devices) >= 3 {
		grouping = "device"
		key = func(x Sample) string { return x.Device }
	}
	count := map[string]int{}
	for _, i := range rows {
		count[key(s.Samples[i])]++
	}
	groups := make([]string, 0, len(count))
	for g := range count {
		groups = append(groups, g)
	}
	name := domain
	if name == "" {
		name = "(unnamed)"
	}
	if len(groups) < 3 {
		return fmt.Errorf("%w: domain %s has %d %s(s); training, validation and test need at least 3, each on its own", ErrSnapshot, name, len(groups), grouping)
	}
	slices.Sort(groups)
	rng := rand.New(rand.NewPCG(seed, HashSeed(domain)))
	rng.Shuffle(len(groups), func(i, j int) { groups[i], groups[j] = groups[j], groups[i] })
	assign := map[string]string{}
	total := float64(len(rows))
	n, k := 0, 0
	for ; k < len(groups)-2 && (k == 0 || float64(n) < opts.TestFraction*total); k++ {
		assign[groups[k]] = SplitTest
		n += count[groups[k]]
	}
	n = 0
	for start := k; k < len(groups)-1 && (k == start || float64(n) < opts.ValFraction*total); k++ {
		assign[groups[k]] = SplitVal
		n += count[groups[k]]
	}
	for _, g := range groups[k:] {
		assign[g] = SplitTrain
	}
	for _, i := range rows {
		s.Samples[i].Split = assign[key(s.Samples[i])]
	}
	s.Grouping[domain] = grouping
	return nil
}

// HashSeed turns a string (a snapshot's hash, a domain's name) into a
// generator seed.
func HashSeed(s string) uint64 {
	h := sha256.Sum256([]byte(s))
	var v uint64
	for _, b := range h[:8] {
		v = v<<8 | uint64(b)
	}
	return v
}

// Rows returns the indices of the samples in split (of every domain when
// domain is "").
func (s *Snapshot) Rows(split, domain string) []int {
	var out []int
	for i, x := range s.Samples {
		if x.Split == split && (domain == "" || x.Domain == domain) {
			out = append(out, i)
		}
	}
	return out
}

// Domains lists the snapshot's domains, sorted.
func (s *Snapshot) Domains() []string {
	seen := map[string]bool{}
	for _, x := range s.Samples {
		seen[x.Domain] = true
	}
	out := make([]string, 0, len(seen))
	for d := range seen {
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

// SplitCount is one cell of a snapshot's split table.
type SplitCount struct {
	Domain, Split             string
	Samples, Slides, Positive int
}

// Counts tabulates the splits per domain, for the model card.
func (s *Snapshot) Counts(positive int) []SplitCount {
	type key struct{ d, sp string }
	m := map[key]*SplitCount{}
	slides := map[key]map[string]bool{}
	for _, x := range s.Samples {
		k := key{x.Domain, x.Split}
		c := m[k]
		if c == nil {
			c = &SplitCount{Domain: x.Domain, Split: x.Split}
			m[k] = c
			slides[k] = map[string]bool{}
		}
		c.Samples++
		if x.Label == positive {
			c.Positive++
		}
		slides[k][x.Device+"\x00"+x.Slide] = true
	}
	order := map[string]int{SplitTrain: 0, SplitVal: 1, SplitTest: 2}
	out := make([]SplitCount, 0, len(m))
	for k, c := range m {
		c.Slides = len(slides[k])
		out = append(out, *c)
	}
	slices.SortFunc(out, func(a, b SplitCount) int {
		return cmp.Or(strings.Compare(a.Domain, b.Domain), cmp.Compare(order[a.Split], order[b.Split]))
	})
	return out
}
