package mqttconn

import (
	"errors"
	"fmt"
	"strings"
)

// Root is the first two levels of every scopewatch topic.
const Root = "scopewatch/v1"

// MaxLevels is the deepest topic we publish (managed brokers often cap it).
const MaxLevels = 7

// Kind is a per-device topic leaf.
type Kind string

// Per-device topics (DESIGN.md §3).
const (
	KindStatus   Kind = "status"
	KindAlert    Kind = "alert"
	KindResult   Kind = "result"
	KindFeedback Kind = "feedback"
	KindLabel    Kind = "label"
)

// ErrTopic marks an invalid topic or topic level.
var ErrTopic = errors.New("invalid topic")

// ValidateLevel accepts a site or device name: 1-64 bytes of [a-z0-9_-].
func ValidateLevel(s string) error {
	if s == "" || len(s) > 64 {
		return fmt.Errorf("%w: level %q must be 1-64 characters", ErrTopic, s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("%w: level %q: only lowercase letters, digits, '-' and '_' are allowed", ErrTopic, s)
		}
	}
	return nil
}

// ValidateTopic checks a topic we publish: lowercase, no wildcards, no
// empty levels, at most MaxLevels levels, not starting with '$'.
func ValidateTopic(topic string) error {
	if topic == "" || len(topic) > 512 {
		return fmt.Errorf("%w: %q: length must be 1-512", ErrTopic, topic)
	}
	if strings.HasPrefix(topic, "$") {
		return fmt.Errorf("%w: %q: topics starting with '$' are reserved", ErrTopic, topic)
	}
	levels := strings.Split(topic, "/")
	if len(levels) > MaxLevels {
		return fmt.Errorf("%w: %q has %d levels, at most %d allowed", ErrTopic, topic, len(levels), MaxLevels)
	}
	for _, l := range levels {
		if l == "" {
			return fmt.Errorf("%w: %q has an empty level", ErrTopic, topic)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
				return fmt.Errorf("%w: %q: level %q may hold only lowercase letters, digits, '-', '_' and '.'", ErrTopic, topic, l)
			}
		}
	}
	return nil
}

// Topics builds and parses the topics under one root: "scopewatch/v1" by
// default, or the configured mqtt.topic_root (some managed brokers want a
// tenant prefix). Every producer and consumer of one fleet must use the same
// root, so the root is a value passed around rather than a constant. The zero
// value uses Root.
type Topics struct {
	root string
}

// NewTopics validates root: one to three levels of lowercase letters,
// digits, '-', '_' and '.', so that a device topic stays within MaxLevels.
func NewTopics(root string) (Topics, error) {
	root = strings.Trim(root, "/")
	if err := ValidateTopic(root); err != nil {
		return Topics{}, fmt.Errorf("topic root: %w", err)
	}
	if n := strings.Count(root, "/") + 1; n > MaxLevels-4 {
		return Topics{}, fmt.Errorf("%w: topic root %q has %d levels, at most %d allowed", ErrTopic, root, n, MaxLevels-4)
	}
	return Topics{root: root}, nil
}

// Root returns the root the topics are built under.
func (t Topics) Root() string {
	if t.root == "" {
		return Root
	}
	return t.root
}

// Device is {root}/{site}/{device}/{kind}.
func (t Topics) Device(site, device string, kind Kind) (string, error) {
	switch kind {
	case KindStatus, KindAlert, KindResult, KindFeedback, KindLabel:
	default:
		return "", fmt.Errorf("%w: unknown kind %q", ErrTopic, kind)
	}
	if err := ValidateLevel(site); err != nil {
		return "", fmt.Errorf("site: %w", err)
	}
	if err := ValidateLevel(device); err != nil {
		return "", fmt.Errorf("device: %w", err)
	}
	return t.Root() + "/" + site + "/" + device + "/" + string(kind), nil
}

// RetuneRequest is {root}/{site}/retune/request.
func (t Topics) RetuneRequest(site string) (string, error) {
	if err := ValidateLevel(site); err != nil {
		return "", fmt.Errorf("site: %w", err)
	}
	return t.Root() + "/" + site + "/retune/request", nil
}

// RetuneRequestFilter subscribes to the retune requests of every site:
// {root}/+/retune/request, through $share/{group}/ when group is set.
func (t Topics) RetuneRequestFilter(group string) (string, error) {
	f := t.Root() + "/+/retune/request"
	if group == "" {
		return f, nil
	}
	if err := ValidateLevel(group); err != nil {
		return "", fmt.Errorf("share group: %w", err)
	}
	return "$share/" + group + "/" + f, nil
}

// ParseRetuneRequest returns the site of a {root}/{site}/retune/request
// topic.
func (t Topics) ParseRetuneRequest(topic string) (string, error) {
	rest, ok := strings.CutPrefix(topic, t.Root()+"/")
	site, tail, _ := strings.Cut(rest, "/")
	if !ok || tail != "retune/request" || ValidateLevel(site) != nil {
		return "", fmt.Errorf("%w: %q is not %s/{site}/retune/request", ErrTopic, topic, t.Root())
	}
	return site, nil
}

// RetuneEvent is {root}/{site}/retune/event, where retune workers report
// their jobs.
func (t Topics) RetuneEvent(site string) (string, error) {
	if err := ValidateLevel(site); err != nil {
		return "", fmt.Errorf("site: %w", err)
	}
	return t.Root() + "/" + site + "/retune/event", nil
}

// ModelOffer is {root}/{site}/model/offer.
func (t Topics) ModelOffer(site string) (string, error) {
	if err := ValidateLevel(site); err != nil {
		return "", fmt.Errorf("site: %w", err)
	}
	return t.Root() + "/" + site + "/model/offer", nil
}

// ModelChunk is {root}/{site}/model/chunk/{version}/{i}.
func (t Topics) ModelChunk(site, version string, i int) (string, error) {
	if err := ValidateLevel(site); err != nil {
		return "", fmt.Errorf("site: %w", err)
	}
	topic := fmt.Sprintf("%s/%s/model/chunk/%s/%d", t.Root(), site, version, i)
	if err := ValidateTopic(topic); err != nil {
		return "", err
	}
	return topic, nil
}

// ModelChunkFilter is the subscription filter for every chunk of one
// offered version: {root}/{site}/model/chunk/{version}/+.
func (t Topics) ModelChunkFilter(site, version string) (string, error) {
	topic, err := t.ModelChunk(site, version, 0)
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(topic, "/0") + "/+", nil
}

// SharedFilter is the subscription filter through which a group of workers
// shares messages: $share/{group}/{root}/+/+/{kind} for a device kind
// across every site and device. An empty group gives the plain filter.
func (t Topics) SharedFilter(group string, kind Kind) (string, error) {
	f := t.Root() + "/+/+/" + string(kind)
	if group == "" {
		return f, nil
	}
	if err := ValidateLevel(group); err != nil {
		return "", fmt.Errorf("share group: %w", err)
	}
	return "$share/" + group + "/" + f, nil
}

// ParseDevice splits {root}/{site}/{device}/{kind}.
func (t Topics) ParseDevice(topic string) (site, device string, kind Kind, err error) {
	root := t.Root()
	rest, ok := strings.CutPrefix(topic, root+"/")
	p := strings.Split(rest, "/")
	if !ok || len(p) != 3 {
		return "", "", "", fmt.Errorf("%w: %q is not %s/{site}/{device}/{kind}", ErrTopic, topic, root)
	}
	if ValidateLevel(p[0]) != nil || ValidateLevel(p[1]) != nil {
		return "", "", "", fmt.Errorf("%w: %q: bad site or device", ErrTopic, topic)
	}
	return p[0], p[1], Kind(p[2]), nil
}
