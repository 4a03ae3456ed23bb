package feedback

import "database/sql"

type storeDB struct {
	*sql.DB
	path string
}
