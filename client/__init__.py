"""dblocks.client: the company side — `dbclient join`, DP-SGD block training and the privacy ledger."""
