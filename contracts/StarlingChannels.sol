// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {SecretRegistry} from "./SecretRegistry.sol";

/// @notice The token interface issuer mode needs: the channel contract mints what leaves a channel
///         and burns what enters one.
interface IIssuedToken {
    function mint(address to, uint256 amount) external;
    function burn(uint256 amount) external;
}

/// @title StarlingChannels
/// @notice Two-party payment channels for one ERC20 token, arranged by the off-chain software as
///         a star around one or more hubs. Balances move off chain as jointly signed RSMC states;
///         this contract only holds deposits, pays cooperative withdrawals, and settles closes.
///
///         Dispute model: a unilateral close records the closer's state and pays the non-closer
///         its share at once; the closer is paid when the challenge period ends. During the
///         period anyone may submit a newer jointly signed state (it can only add to the
///         non-closer's share) or a revocation signed by the closer that covers the closed nonce,
///         which forfeits the whole channel to the non-closer.
///
///         Participants are ordered: side 1 is the numerically lower address. Every signed payload
///         is EIP-712 typed data under the domain {name: "Starling", version: "1", chainId,
///         verifyingContract}, and every payload names the channel id, which binds the chain id,
///         this contract, both participants and a per-pair counter.
///
///         Modes, fixed at deployment:
///         - collateral mode (`issuer == address(0)`): deposits are plain ERC20 transfers and
///           every payout is a transfer back;
///         - issuer mode: the token's issuer lets hubs grant credit lines in their channels. A
///           deposit is burned on entry and every payout is minted on exit, except that what is
///           paid to the credit side is first absorbed by its unused credit (credit is not money
///           until it leaves the channel towards the other side).
contract StarlingChannels is EIP712, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    // ---------------------------------------------------------------- types

    /// @notice Life cycle of a participant pair's current channel.
    enum Phase {
        None, // never opened, or settled and fully unlocked
        Open,
        Closed, // challenge period running
        Settled // period over, closer paid; pending locks still to unlock
    }

    /// @dev Amounts are stored as uint112 (up to 5.19e33 base units), like Uniswap v2 reserves,
    ///      so that an open channel's hot fields share few slots.
    struct Channel {
        // slot 0: written at open, so a first deposit updates a non-zero slot
        uint24 counter; // channels opened so far by this pair; part of the channel id
        Phase phase;
        uint112 deposit1;
        uint112 deposit2;
        // slot 1
        uint112 withdrawn1;
        uint112 withdrawn2;
        // slot 2: issuer mode only
        uint112 credit; // credit line granted to `creditSide`
        uint112 creditAbsorbed; // payouts to the credit side absorbed by its credit so far
        uint8 creditSide; // 0 none, 1 or 2
        // slot 3: closed
        uint40 settleAt; // end of the challenge period (unix seconds)
        uint64 nonce; // nonce of the state on record
        uint8 closerSide; // 1 or 2
        uint112 closerAmount; // the closer's share, paid at settle
        // slot 4: closed, pending locks of the state on record
        uint112 locked1;
        uint112 locked2;
        // slot 5
        bytes32 locksRoot;
    }

    /// @notice An off-chain channel state. `sent1`/`sent2` are the cumulative amounts each side
    ///         has paid the other; `locked1`/`locked2` the sums of each side's pending HTLC locks,
    ///         whose list hashes to `locksRoot` (zero when there are none).
    struct State {
        bytes32 channelId;
        uint64 nonce;
        uint256 sent1;
        uint256 sent2;
        uint256 locked1;
        uint256 locked2;
        bytes32 locksRoot;
    }

    /// @notice A participant's EIP-712 `Update` signature on a state; it also revokes every state
    ///         of the channel with nonce < `revokedBelow` (0 revokes nothing).
    struct StateSignature {
        uint64 revokedBelow;
        bytes signature;
    }

    /// @notice A pending HTLC lock. `sender` is the side (1 or 2) whose funds are locked.
    ///         `secretHash` is keccak256(abi.encode(bytes32 secret)); `expiry` is unix seconds.
    struct Lock {
        uint8 sender;
        uint256 amount;
        uint256 expiry;
        bytes32 secretHash;
    }

    // -------------------------------------------------------- EIP-712 types

    bytes32 public constant STATE_TYPEHASH = keccak256(
        "State(bytes32 channelId,uint64 nonce,uint256 sent1,uint256 sent2,uint256 locked1,uint256 locked2,bytes32 locksRoot)"
    );
    bytes32 public constant UPDATE_TYPEHASH = keccak256(
        "Update(bytes32 channelId,uint64 revokedBelow,State state)State(bytes32 channelId,uint64 nonce,uint256 sent1,uint256 sent2,uint256 locked1,uint256 locked2,bytes32 locksRoot)"
    );
    bytes32 public constant WITHDRAW_TYPEHASH =
        keccak256("Withdraw(bytes32 channelId,address participant,uint256 totalWithdraw,uint256 expiry)");
    bytes32 public constant COOPERATIVE_CLOSE_TYPEHASH =
        keccak256("CooperativeClose(bytes32 channelId,uint256 balance1,uint256 balance2)");

    // -------------------------------------------------------------- storage

    /// @notice The token this contract holds channels for.
    IERC20 public immutable token;
    /// @notice Where HTLC secrets are registered.
    SecretRegistry public immutable secretRegistry;
    /// @notice Length of the challenge period after a unilateral close, in seconds.
    uint256 public immutable challengePeriod;
    /// @notice The token issuer in issuer mode; address(0) in collateral mode.
    address public immutable issuer;

    /// @notice Largest credit line each hub may grant in one channel (issuer mode).
    mapping(address hub => uint256 limit) public creditLimit;

    mapping(bytes32 pairKey => Channel) private _channels;

    // --------------------------------------------------------------- events

    event ChannelOpened(bytes32 indexed channelId, address indexed participant1, address indexed participant2);
    event Deposited(bytes32 indexed channelId, address indexed participant, uint256 totalDeposit);
    event CreditLimitSet(address indexed hub, uint256 limit);
    event CreditGranted(bytes32 indexed channelId, address indexed hub, uint256 totalCredit);
    event Withdrawn(bytes32 indexed channelId, address indexed participant, uint256 totalWithdraw);
    event CooperativelyClosed(bytes32 indexed channelId, uint256 balance1, uint256 balance2);
    event ChannelClosed(
        bytes32 indexed channelId, address indexed closer, uint64 nonce, uint256 settleAt, uint256 nonCloserPaid
    );
    event StateUpdated(bytes32 indexed channelId, uint64 nonce, uint256 nonCloserPaid);
    event ChannelPenalized(bytes32 indexed channelId, address indexed cheater, address indexed beneficiary, uint256 amount);
    event ChannelSettled(bytes32 indexed channelId, uint256 closerPaid, uint256 lockedRemaining);
    event LocksUnlocked(bytes32 indexed channelId, uint256 paid1, uint256 paid2);

    // --------------------------------------------------------------- errors

    error InvalidParticipants(address a, address b);
    error ParticipantsNotOrdered(address participant1, address participant2);
    error ChannelIdMismatch(bytes32 expected, bytes32 given);
    error WrongPhase(bytes32 channelId, Phase expected, Phase actual);
    error TotalNotIncreasing(uint256 current, uint256 requested);
    error AmountOutOfRange(uint256 amount);
    error InvalidSignature(address expectedSigner);
    error WithdrawExpired(uint256 expiry, uint256 nowTime);
    error WithdrawExceedsChannel(uint256 totalWithdrawn, uint256 capacity);
    error BalancesMismatch(uint256 sum, uint256 capacity);
    error StaleNonce(uint64 recorded, uint64 given);
    error LowersPaidShare(uint256 paid, uint256 offered);
    error RevocationTooOld(uint64 closedNonce, uint64 revokedBelow);
    error ChallengePeriodOver(uint256 settleAt, uint256 nowTime);
    error ChallengePeriodRunning(uint256 settleAt, uint256 nowTime);
    error LocksRootMismatch(bytes32 expected, bytes32 given);
    error LockNotExpired(bytes32 secretHash, uint256 expiry);
    error InvalidLockSender(uint8 sender);
    error NotIssuerMode();
    error NotIssuer(address caller);
    error CreditLimitExceeded(uint256 limit, uint256 requested);
    error CreditSideTaken(uint8 creditSide);
    error InvalidState();

    // ---------------------------------------------------------- constructor

    /// @param token_ The ERC20 token of every channel of this contract.
    /// @param secretRegistry_ The registry HTLC secrets are revealed in.
    /// @param challengePeriod_ Seconds between a unilateral close and settlement.
    /// @param issuer_ The token's issuer for issuer mode (the token must let this contract mint
    ///        and burn), or address(0) for collateral mode.
    constructor(IERC20 token_, SecretRegistry secretRegistry_, uint256 challengePeriod_, address issuer_)
        EIP712("Starling", "1")
    {
        token = token_;
        secretRegistry = secretRegistry_;
        challengePeriod = challengePeriod_;
        issuer = issuer_;
    }

    // ---------------------------------------------------------------- views

    /// @notice The id of the current (or, if none is open, the most recent) channel of a pair.
    /// @param a One participant.
    /// @param b The other participant.
    function channelId(address a, address b) external view returns (bytes32) {
        (address p1, address p2) = _order(a, b);
        return _channelId(p1, p2, _channels[_pairKey(p1, p2)].counter);
    }

    /// @notice The stored record of a pair's channel, with its id.
    /// @param a One participant.
    /// @param b The other participant.
    function getChannel(address a, address b) external view returns (bytes32 id, Channel memory channel) {
        (address p1, address p2) = _order(a, b);
        channel = _channels[_pairKey(p1, p2)];
        id = _channelId(p1, p2, channel.counter);
    }

    /// @notice The EIP-712 struct hash of a state, as used inside `Update` signatures.
    /// @param state The state.
    function hashState(State calldata state) public pure returns (bytes32) {
        return keccak256(
            abi.encode(
                STATE_TYPEHASH,
                state.channelId,
                state.nonce,
                state.sent1,
                state.sent2,
                state.locked1,
                state.locked2,
                state.locksRoot
            )
        );
    }

    /// @notice The locks root of a list of locks: keccak256 of its ABI encoding, or zero for none.
    /// @param locks The pending locks.
    function hashLocks(Lock[] calldata locks) public pure returns (bytes32) {
        return locks.length == 0 ? bytes32(0) : keccak256(abi.encode(locks));
    }

    /// @notice The EIP-712 domain separator of this contract on this chain.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // ------------------------------------------------------------- opening

    /// @notice Opens a channel between `a` and `b`. Anyone may call it (a hub may open its users'
    ///         channels for them); only one channel per pair can exist at a time.
    /// @param a One participant.
    /// @param b The other participant.
    /// @return id The new channel's id.
    function open(address a, address b) external nonReentrant returns (bytes32 id) {
        (address p1, address p2) = _order(a, b);
        Channel storage c = _channels[_pairKey(p1, p2)];
        if (c.phase != Phase.None) revert WrongPhase(_channelId(p1, p2, c.counter), Phase.None, c.phase);
        uint24 counter = c.counter + 1;
        c.counter = counter;
        c.phase = Phase.Open;
        id = _channelId(p1, p2, counter);
        emit ChannelOpened(id, p1, p2);
    }

    /// @notice Raises `participant`'s total deposit to `totalDeposit`, pulling the difference from
    ///         the caller (who must have approved it). A total, not an increment, so a replayed or
    ///         repeated call deposits nothing twice.
    /// @param id The channel id.
    /// @param participant Whose side the deposit is credited to.
    /// @param partner The other participant.
    /// @param totalDeposit The new total deposit of `participant`.
    function deposit(bytes32 id, address participant, address partner, uint256 totalDeposit) external nonReentrant {
        (Channel storage c, uint8 side) = _openChannel(id, participant, partner);
        uint256 current = side == 1 ? c.deposit1 : c.deposit2;
        if (totalDeposit <= current) revert TotalNotIncreasing(current, totalDeposit);
        uint112 total = _u112(totalDeposit);
        if (side == 1) c.deposit1 = total;
        else c.deposit2 = total;
        emit Deposited(id, participant, totalDeposit);
        uint256 amount = totalDeposit - current;
        token.safeTransferFrom(msg.sender, address(this), amount);
        if (issuer != address(0)) IIssuedToken(address(token)).burn(amount);
    }

    /// @notice Sets how much credit `hub` may grant in each of its channels (issuer mode, issuer
    ///         only). Lowering it does not touch credit already granted.
    /// @param hub The hub.
    /// @param limit Largest total credit per channel, in base units.
    function setCreditLimit(address hub, uint256 limit) external {
        if (issuer == address(0)) revert NotIssuerMode();
        if (msg.sender != issuer) revert NotIssuer(msg.sender);
        creditLimit[hub] = limit;
        emit CreditLimitSet(hub, limit);
    }

    /// @notice Raises the caller's (a hub's) credit line in its channel with `partner` to
    ///         `totalCredit`, within its credit limit. Issuer mode only; one credit side per channel.
    /// @param id The channel id.
    /// @param partner The hub's partner in the channel.
    /// @param totalCredit The new total credit line.
    function grantCredit(bytes32 id, address partner, uint256 totalCredit) external nonReentrant {
        if (issuer == address(0)) revert NotIssuerMode();
        (Channel storage c, uint8 side) = _openChannel(id, msg.sender, partner);
        uint256 limit = creditLimit[msg.sender];
        if (totalCredit > limit) revert CreditLimitExceeded(limit, totalCredit);
        if (c.creditSide != 0 && c.creditSide != side) revert CreditSideTaken(c.creditSide);
        if (totalCredit <= c.credit) revert TotalNotIncreasing(c.credit, totalCredit);
        c.creditSide = side;
        c.credit = _u112(totalCredit);
        emit CreditGranted(id, msg.sender, totalCredit);
    }

    // ------------------------------------------------------- while open

    /// @notice Pays `participant` up to a new total withdrawn amount while the channel stays
    ///         open. Both participants sign `Withdraw{channelId, participant, totalWithdraw,
    ///         expiry}`; anyone may submit it (a participant that submits it may pass an empty
    ///         signature for itself). The total is monotonic, so a signature pays once.
    /// @param id The channel id.
    /// @param participant Who is paid.
    /// @param partner The other participant.
    /// @param totalWithdraw The participant's new total withdrawn amount.
    /// @param expiry Unix time after which the signatures are void.
    /// @param participantSig The participant's signature.
    /// @param partnerSig The partner's signature.
    function withdraw(
        bytes32 id,
        address participant,
        address partner,
        uint256 totalWithdraw,
        uint256 expiry,
        bytes calldata participantSig,
        bytes calldata partnerSig
    ) external nonReentrant {
        (Channel storage c, uint8 side) = _openChannel(id, participant, partner);
        if (block.timestamp > expiry) revert WithdrawExpired(expiry, block.timestamp);
        uint256 current = side == 1 ? c.withdrawn1 : c.withdrawn2;
        if (totalWithdraw <= current) revert TotalNotIncreasing(current, totalWithdraw);
        bytes32 digest =
            _hashTypedDataV4(keccak256(abi.encode(WITHDRAW_TYPEHASH, id, participant, totalWithdraw, expiry)));
        _requireConsent(digest, participantSig, participant);
        _requireConsent(digest, partnerSig, partner);
        uint256 funds = uint256(c.deposit1) + c.deposit2 + c.credit;
        uint256 withdrawn = (side == 1 ? c.withdrawn2 : c.withdrawn1) + totalWithdraw;
        if (withdrawn > funds) revert WithdrawExceedsChannel(withdrawn, funds);
        if (side == 1) c.withdrawn1 = uint112(totalWithdraw);
        else c.withdrawn2 = uint112(totalWithdraw);
        emit Withdrawn(id, participant, totalWithdraw);
        _payout(c, side, participant, totalWithdraw - current);
    }

    /// @notice Closes and settles at once with final balances both participants signed as
    ///         `CooperativeClose{channelId, balance1, balance2}`. The balances must add up to the
    ///         channel's funds (deposits plus credit minus withdrawals), so no lock may be pending.
    ///         Anyone may submit it; a participant that submits it may pass an empty signature.
    /// @param id The channel id.
    /// @param participant1 The lower participant address.
    /// @param participant2 The higher participant address.
    /// @param balance1 Final balance of participant1.
    /// @param balance2 Final balance of participant2.
    /// @param signature1 participant1's signature.
    /// @param signature2 participant2's signature.
    function cooperativeClose(
        bytes32 id,
        address participant1,
        address participant2,
        uint256 balance1,
        uint256 balance2,
        bytes calldata signature1,
        bytes calldata signature2
    ) external nonReentrant {
        _requireOrdered(participant1, participant2);
        (Channel storage c,) = _openChannel(id, participant1, participant2);
        bytes32 digest =
            _hashTypedDataV4(keccak256(abi.encode(COOPERATIVE_CLOSE_TYPEHASH, id, balance1, balance2)));
        _requireConsent(digest, signature1, participant1);
        _requireConsent(digest, signature2, participant2);
        uint256 capacity = _capacity(c);
        if (balance1 + balance2 != capacity) revert BalancesMismatch(balance1 + balance2, capacity);
        emit CooperativelyClosed(id, balance1, balance2);
        _payout(c, 1, participant1, balance1);
        _payout(c, 2, participant2, balance2);
        _clear(c);
    }

    // ------------------------------------------------------------- disputes

    /// @notice Closes the channel unilaterally with a state the partner signed (the caller is the
    ///         closer). The partner's share is paid at once; the caller's is paid by `settle` once
    ///         the challenge period ends. A state with nonce 0 needs no signature and means "no
    ///         off-chain payments": each side keeps its deposits minus withdrawals.
    /// @param id The channel id.
    /// @param partner The other participant.
    /// @param state The state to close with.
    /// @param partnerSig The partner's `Update` signature on `state`.
    function close(bytes32 id, address partner, State calldata state, StateSignature calldata partnerSig)
        external
        nonReentrant
    {
        (Channel storage c, uint8 closerSide) = _openChannel(id, msg.sender, partner);
        if (state.channelId != id) revert ChannelIdMismatch(id, state.channelId);
        if (state.nonce == 0) {
            if (state.sent1 | state.sent2 | state.locked1 | state.locked2 != 0 || state.locksRoot != 0) {
                revert InvalidState();
            }
        } else {
            _requireUpdateSigner(id, hashState(state), partnerSig, partner);
        }
        (uint256 b1, uint256 b2, uint256 l1, uint256 l2) = _shares(c, state);
        uint256 settleAt = block.timestamp + challengePeriod;
        c.phase = Phase.Closed;
        c.settleAt = uint40(settleAt);
        c.nonce = state.nonce;
        c.closerSide = closerSide;
        _recordShares(c, closerSide == 1 ? b1 : b2, l1, l2, state.locksRoot);
        uint256 nonCloserPaid = closerSide == 1 ? b2 : b1;
        emit ChannelClosed(id, msg.sender, state.nonce, settleAt, nonCloserPaid);
        _payout(c, 3 - closerSide, partner, nonCloserPaid);
    }

    /// @notice Replaces the closed state with a newer jointly signed one during the challenge
    ///         period. Anyone may submit it (a watcher acting for the non-closer); a participant
    ///         that submits it may pass an empty signature for itself. The non-closer
    ///         was already paid its share of the older state; it is paid any increase now, and a
    ///         state that would lower it is refused, so nothing is ever clawed back.
    /// @param id The channel id.
    /// @param participant1 The lower participant address.
    /// @param participant2 The higher participant address.
    /// @param state The newer state.
    /// @param signature1 participant1's `Update` signature on `state`.
    /// @param signature2 participant2's `Update` signature on `state`.
    function updateState(
        bytes32 id,
        address participant1,
        address participant2,
        State calldata state,
        StateSignature calldata signature1,
        StateSignature calldata signature2
    ) external nonReentrant {
        Channel storage c = _closedChannel(id, participant1, participant2);
        if (state.channelId != id) revert ChannelIdMismatch(id, state.channelId);
        if (state.nonce <= c.nonce) revert StaleNonce(c.nonce, state.nonce);
        bytes32 stateHash = hashState(state);
        if (msg.sender != participant1) _requireUpdateSigner(id, stateHash, signature1, participant1);
        if (msg.sender != participant2) _requireUpdateSigner(id, stateHash, signature2, participant2);
        uint8 closerSide = c.closerSide;
        uint256 paid = _nonCloserPaid(c);
        (uint256 b1, uint256 b2, uint256 l1, uint256 l2) = _shares(c, state);
        uint256 offered = closerSide == 1 ? b2 : b1;
        if (offered < paid) revert LowersPaidShare(paid, offered);
        c.nonce = state.nonce;
        _recordShares(c, closerSide == 1 ? b1 : b2, l1, l2, state.locksRoot);
        emit StateUpdated(id, state.nonce, offered);
        _payout(c, 3 - closerSide, closerSide == 1 ? participant2 : participant1, offered - paid);
    }

    /// @notice Penalises a closer that closed with a revoked state: given the closer's `Update`
    ///         signature with `revokedBelow` > the closed nonce, the whole channel goes to the
    ///         non-closer at once and the channel ends. Anyone may submit it during the period.
    /// @param id The channel id.
    /// @param participant1 The lower participant address.
    /// @param participant2 The higher participant address.
    /// @param revokedBelow The closer revoked every state with a lower nonce.
    /// @param stateHash The EIP-712 struct hash of the state that signature was on.
    /// @param signature The closer's `Update` signature.
    function penalize(
        bytes32 id,
        address participant1,
        address participant2,
        uint64 revokedBelow,
        bytes32 stateHash,
        bytes calldata signature
    ) external nonReentrant {
        Channel storage c = _closedChannel(id, participant1, participant2);
        if (revokedBelow <= c.nonce) revert RevocationTooOld(c.nonce, revokedBelow);
        (address closer, address beneficiary) =
            c.closerSide == 1 ? (participant1, participant2) : (participant2, participant1);
        _requireSigner(_updateDigest(id, revokedBelow, stateHash), signature, closer);
        uint256 amount = uint256(c.closerAmount) + c.locked1 + c.locked2;
        uint8 beneficiarySide = 3 - c.closerSide;
        emit ChannelPenalized(id, closer, beneficiary, amount);
        _payout(c, beneficiarySide, beneficiary, amount);
        _clear(c);
    }

    /// @notice Ends the challenge period: pays the closer its share. If locks are pending the
    ///         channel waits in phase Settled for `unlock`; otherwise it ends. Anyone may call it.
    /// @param id The channel id.
    /// @param participant1 The lower participant address.
    /// @param participant2 The higher participant address.
    function settle(bytes32 id, address participant1, address participant2) external nonReentrant {
        _requireOrdered(participant1, participant2);
        Channel storage c = _phaseChannel(id, participant1, participant2, Phase.Closed);
        if (block.timestamp <= c.settleAt) revert ChallengePeriodRunning(c.settleAt, block.timestamp);
        uint8 closerSide = c.closerSide;
        uint256 closerAmount = c.closerAmount;
        uint256 locked = uint256(c.locked1) + c.locked2;
        emit ChannelSettled(id, closerAmount, locked);
        _payout(c, closerSide, closerSide == 1 ? participant1 : participant2, closerAmount);
        if (locked == 0) {
            _clear(c);
        } else {
            // Keep only what unlock reads: phase, locks and (issuer mode) credit.
            c.phase = Phase.Settled;
            _zeroSlots(c, 1, 1);
            _zeroSlots(c, 3, 1);
        }
    }

    /// @notice Resolves the pending locks of a settled channel: each lock pays its receiver if its
    ///         secret was registered at or before its expiry, else it returns to its sender. Needs
    ///         the full list of locks of the state on record. A lock whose secret is unregistered
    ///         and whose expiry has not passed keeps the whole call waiting. Anyone may call it.
    /// @param id The channel id.
    /// @param participant1 The lower participant address.
    /// @param participant2 The higher participant address.
    /// @param locks The pending locks, in the order they were hashed.
    function unlock(bytes32 id, address participant1, address participant2, Lock[] calldata locks)
        external
        nonReentrant
    {
        _requireOrdered(participant1, participant2);
        Channel storage c = _phaseChannel(id, participant1, participant2, Phase.Settled);
        bytes32 root = hashLocks(locks);
        if (root != c.locksRoot) revert LocksRootMismatch(c.locksRoot, root);
        // Budgets: a list that claims more than a side locked pays only what it locked.
        uint256 budget1 = c.locked1;
        uint256 budget2 = c.locked2;
        uint256 pay1;
        uint256 pay2;
        for (uint256 i = 0; i < locks.length; ++i) {
            Lock calldata lock = locks[i];
            if (lock.sender != 1 && lock.sender != 2) revert InvalidLockSender(lock.sender);
            uint256 revealed = secretRegistry.revealedAt(lock.secretHash);
            bool claimed = revealed != 0 && revealed <= lock.expiry;
            if (!claimed && block.timestamp <= lock.expiry) revert LockNotExpired(lock.secretHash, lock.expiry);
            if (!claimed) continue; // returns to the sender with the rest of its budget
            if (lock.sender == 1) {
                uint256 amount = lock.amount < budget1 ? lock.amount : budget1;
                budget1 -= amount;
                pay2 += amount;
            } else {
                uint256 amount = lock.amount < budget2 ? lock.amount : budget2;
                budget2 -= amount;
                pay1 += amount;
            }
        }
        pay1 += budget1;
        pay2 += budget2;
        emit LocksUnlocked(id, pay1, pay2);
        _payout(c, 1, participant1, pay1);
        _payout(c, 2, participant2, pay2);
        c.phase = Phase.None;
        if (c.creditSide != 0) _zeroSlots(c, 2, 1);
        _zeroSlots(c, 4, 2);
    }

    // ------------------------------------------------------------ internals

    function _order(address a, address b) private pure returns (address, address) {
        if (a == b || a == address(0) || b == address(0)) revert InvalidParticipants(a, b);
        return a < b ? (a, b) : (b, a);
    }

    function _requireOrdered(address p1, address p2) private pure {
        if (p1 >= p2 || p1 == address(0)) revert ParticipantsNotOrdered(p1, p2);
    }

    function _pairKey(address p1, address p2) private pure returns (bytes32) {
        return keccak256(abi.encodePacked(p1, p2));
    }

    function _channelId(address p1, address p2, uint24 counter) private view returns (bytes32) {
        return keccak256(abi.encode(block.chainid, address(this), p1, p2, counter));
    }

    /// @dev Loads a channel in `phase` whose id is `id`; participants must be ordered.
    function _phaseChannel(bytes32 id, address p1, address p2, Phase phase) private view returns (Channel storage c) {
        c = _channels[_pairKey(p1, p2)];
        bytes32 expected = _channelId(p1, p2, c.counter);
        if (expected != id) revert ChannelIdMismatch(expected, id);
        if (c.phase != phase) revert WrongPhase(id, phase, c.phase);
    }

    /// @dev Loads an open channel and returns the side (1 or 2) of `participant`.
    function _openChannel(bytes32 id, address participant, address partner)
        private
        view
        returns (Channel storage c, uint8 side)
    {
        (address p1, address p2) = _order(participant, partner);
        c = _phaseChannel(id, p1, p2, Phase.Open);
        side = participant == p1 ? 1 : 2;
    }

    /// @dev Loads a closed channel whose challenge period is still running.
    function _closedChannel(bytes32 id, address p1, address p2) private view returns (Channel storage c) {
        _requireOrdered(p1, p2);
        c = _phaseChannel(id, p1, p2, Phase.Closed);
        if (block.timestamp > c.settleAt) revert ChallengePeriodOver(c.settleAt, block.timestamp);
    }

    function _capacity(Channel storage c) private view returns (uint256) {
        return uint256(c.deposit1) + c.deposit2 + c.credit - c.withdrawn1 - c.withdrawn2;
    }

    /// @dev Splits the channel's funds per `state`: each side's definite share and its pending
    ///      locks. Out-of-range figures are clamped so that the four always add up to the funds.
    function _shares(Channel storage c, State calldata s)
        private
        view
        returns (uint256 b1, uint256 b2, uint256 l1, uint256 l2)
    {
        uint256 capacity = _capacity(c);
        l1 = _min(_u112(s.locked1), capacity);
        l2 = _min(_u112(s.locked2), capacity - l1);
        uint256 available = capacity - l1 - l2;
        int256 in1 = int256(uint256(c.deposit1)) + int256(uint256(_u112(s.sent2)));
        int256 out1 = int256(uint256(c.withdrawn1)) + int256(uint256(_u112(s.sent1))) + int256(l1);
        if (c.creditSide == 1) in1 += int256(uint256(c.credit));
        int256 net1 = in1 - out1;
        b1 = net1 <= 0 ? 0 : _min(uint256(net1), available);
        b2 = available - b1;
    }

    function _recordShares(Channel storage c, uint256 closerAmount, uint256 l1, uint256 l2, bytes32 locksRoot)
        private
    {
        c.closerAmount = uint112(closerAmount);
        if (c.locked1 != l1 || c.locked2 != l2) {
            c.locked1 = uint112(l1);
            c.locked2 = uint112(l2);
        }
        if (c.locksRoot != locksRoot) c.locksRoot = locksRoot;
    }

    function _nonCloserPaid(Channel storage c) private view returns (uint256) {
        return _capacity(c) - c.closerAmount - c.locked1 - c.locked2;
    }

    function _updateDigest(bytes32 id, uint64 revokedBelow, bytes32 stateHash) private view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(UPDATE_TYPEHASH, id, revokedBelow, stateHash)));
    }

    function _requireUpdateSigner(bytes32 id, bytes32 stateHash, StateSignature calldata sig, address signer)
        private
        view
    {
        _requireSigner(_updateDigest(id, sig.revokedBelow, stateHash), sig.signature, signer);
    }

    /// @dev A participant that sends the transaction needs no signature: msg.sender authenticates it.
    function _requireConsent(bytes32 digest, bytes calldata signature, address participant) private view {
        if (msg.sender != participant) _requireSigner(digest, signature, participant);
    }

    function _requireSigner(bytes32 digest, bytes calldata signature, address signer) private pure {
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(digest, signature);
        if (err != ECDSA.RecoverError.NoError || recovered != signer) revert InvalidSignature(signer);
    }

    /// @dev Pays `amount` to `to` on `side`. Collateral mode transfers. Issuer mode lets the
    ///      credit side's unused credit absorb the payout first and mints the rest.
    function _payout(Channel storage c, uint8 side, address to, uint256 amount) private {
        if (amount == 0) return;
        if (issuer == address(0)) {
            token.safeTransfer(to, amount);
            return;
        }
        if (side == c.creditSide) {
            uint256 unused = c.credit - c.creditAbsorbed;
            uint256 absorbed = _min(amount, unused);
            if (absorbed != 0) {
                c.creditAbsorbed += uint112(absorbed);
                amount -= absorbed;
            }
        }
        if (amount != 0) IIssuedToken(address(token)).mint(to, amount);
    }

    /// @dev Ends the channel, keeping only the pair's counter so the next channel gets a new id.
    function _clear(Channel storage c) private {
        uint256 counter = c.counter; // the low 24 bits of slot 0
        assembly ("memory-safe") {
            sstore(c.slot, counter)
        }
        _zeroSlots(c, 1, 5);
    }

    /// @dev Zeroes `count` storage slots of a channel record from slot `first` on.
    function _zeroSlots(Channel storage c, uint256 first, uint256 count) private {
        assembly ("memory-safe") {
            let slot := add(c.slot, first)
            for { let end := add(slot, count) } lt(slot, end) { slot := add(slot, 1) } { sstore(slot, 0) }
        }
    }

    function _u112(uint256 amount) private pure returns (uint112) {
        if (amount > type(uint112).max) revert AmountOutOfRange(amount);
        return uint112(amount);
    }

    function _min(uint256 a, uint256 b) private pure returns (uint256) {
        return a < b ? a : b;
    }
}
