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

// DeviceTopic is scopewatch/v1/{site}/{device}/{kind}.
func DeviceTopic(site, device string, kind Kind) (string, error) {
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
	return Root + "/" + site + "/" + device + "/" + string(kind), nil
}

// RetuneRequestTopic is scopewatch/v1/{site}/retune/request.
func RetuneRequestTopic(site string) (string, error) {
	if err := ValidateLevel(site); err != nil {
		return "", fmt.Errorf("site: %w", err)
	}
	return Root + "/" + site + "/retune/request", nil
}

// ModelOfferTopic is scopewatch/v1/{site}/model/offer.
func ModelOfferTopic(site string) (string, error) {
	if err := ValidateLevel(site); err != nil {
		return "", fmt.Errorf("site: %w", err)
	}
	return Root + "/" + site + "/model/offer", nil
}

// ModelChunkTopic is scopewatch/v1/{site}/model/chunk/{version}/{i}.
func ModelChunkTopic(site, version string, i int) (string, error) {
	if err := ValidateLevel(site); err != nil {
		return "", fmt.Errorf("site: %w", err)
	}
	t := fmt.Sprintf("%s/%s/model/chunk/%s/%d", Root, site, version, i)
	if err := ValidateTopic(t); err != nil {
		return "", err
	}
	return t, nil
}

// SharedFilter is the subscription filter through which a group of workers
// shares messages: $share/{group}/scopewatch/v1/+/+/{kind} for a device kind
// across every site and device. An empty group gives the plain filter.
func SharedFilter(group string, kind Kind) (string, error) {
	f := Root + "/+/+/" + string(kind)
	if group == "" {
		return f, nil
	}
	if err := ValidateLevel(group); err != nil {
		return "", fmt.Errorf("share group: %w", err)
	}
	return "$share/" + group + "/" + f, nil
}

// ParseDeviceTopic splits scopewatch/v1/{site}/{device}/{kind}.
func ParseDeviceTopic(topic string) (site, device string, kind Kind, err error) {
	p := strings.Split(topic, "/")
	if len(p) != 5 || p[0]+"/"+p[1] != Root {
		return "", "", "", fmt.Errorf("%w: %q is not %s/{site}/{device}/{kind}", ErrTopic, topic, Root)
	}
	if ValidateLevel(p[2]) != nil || ValidateLevel(p[3]) != nil {
		return "", "", "", fmt.Errorf("%w: %q: bad site or device", ErrTopic, topic)
	}
	return p[2], p[3], Kind(p[4]), nil
}
